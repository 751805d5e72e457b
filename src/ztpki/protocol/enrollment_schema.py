"""The enrollment XSD and a hardened parser: bytes become a schema-valid tree or MalformedInput.

No DTD, entity, processing instruction, foreign encoding or network access gets past
``parse``; a schema failure becomes a message naming the element and what it must hold,
which repeats a value only when it is short and not secret.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from importlib import resources
from typing import Final

from lxml import etree

from ztpki.errors import MalformedInput
from ztpki.protocol.framing import MAX_FRAME_SIZE
from ztpki.untrusted import quote

# The protocol's version is in its namespace (and the XSD's version attribute): a message of
# another version fails validation instead of being half understood.
PROTOCOL_VERSION: Final = 1
NAMESPACE: Final = f"urn:ztpki:enrollment:{PROTOCOL_VERSION}"
_PREFIX: Final = "{" + NAMESPACE + "}"
_XSD: Final = resources.files("ztpki.protocol").joinpath("enrollment.xsd").read_bytes()


class InvalidEnrollmentMessage(MalformedInput, ValueError):
    """A message, or a field value, the enrollment protocol does not allow.

    A MalformedInput (code "malformed") for services, and a ValueError for code that
    builds the dataclasses with a wrong value.
    """


@dataclass(frozen=True)
class _Rule:
    what: str
    shown: bool = True  # False for secrets and blobs: the message names the field only


_IDENTIFIER = _Rule("1-64 characters of A-Z a-z 0-9 . _ -")
_TEXT = _Rule("1-64 characters without control characters")
_BOOLEAN = _Rule("true or false")
_DER = "of 1 byte to 64 KiB"
_RULES: Final[dict[str, _Rule]] = {
    "id": _IDENTIFIER,
    "requestId": _IDENTIFIER,
    "DeviceId": _IDENTIFIER,
    "CA": _IDENTIFIER,
    "KeyAlgorithm": _Rule("one of ec-p256, ec-p384, rsa-2048, rsa-3072, rsa-4096, ed25519"),
    "ValidityDays": _Rule("a whole number of days from 1 to 36500, digits only"),
    "Organization": _TEXT,
    "OrganizationalUnit": _TEXT,
    "Locality": _TEXT,
    "Country": _Rule("2 upper-case letters (an ISO 3166 code such as DE)"),
    "Email": _Rule("an e-mail address such as pki@example.com, at most 128 characters"),
    "EncryptPrivateKey": _Rule(
        "a passphrase of 8-256 characters without control characters (value not shown)",
        shown=False,
    ),
    "IncludeCACertificates": _BOOLEAN,
    "reissue": _BOOLEAN,
    "encrypted": _BOOLEAN,
    "DnsName": _Rule(
        "a host name of at most 253 characters: dot-separated labels of letters, digits "
        "and inner hyphens, no wildcard"
    ),
    "IpAddress": _Rule("an IPv4 or IPv6 address without zone"),
    "CSR": _Rule(f"base64 of a DER PKCS#10 request {_DER}", shown=False),
    "Certificate": _Rule(f"base64 of a DER X.509 certificate {_DER}", shown=False),
    "PrivateKey": _Rule(f"base64 of a DER PKCS#8 private key {_DER}", shown=False),
    "code": _Rule(
        "one of malformed, unsupported-parameter, unknown-ca, not-authorized, already-issued, "
        "unknown-certificate, unavailable, internal"
    ),
    "Serial": _Rule("1-40 hexadecimal digits (a certificate serial number)"),
    "Reason": _Rule(
        "an RFC 5280 reason: unspecified, keyCompromise, cACompromise, affiliationChanged, "
        "superseded, cessationOfOperation, certificateHold, privilegeWithdrawn, aACompromise"
    ),
    "InvalidityDate": _Rule("a UTC instant such as 2026-12-07T16:25:03Z"),
    "RevokedAt": _Rule("a UTC instant such as 2026-12-07T16:25:03Z"),
    "releaseHold": _BOOLEAN,
    "released": _BOOLEAN,
    "EnrollmentError": _Rule("a message of 1-1024 characters without control characters"),
}
_SHOWN_LIMIT = 66  # 64 characters and the quotes; a longer value is cut, with a marker


def _shown(value: object) -> str:
    # The client's own text: quoted, escaped and cut, so it cannot forge a log line.
    return quote(value, limit=_SHOWN_LIMIT)


def invalid_value(name: str, value: object) -> InvalidEnrollmentMessage:
    """The error for a bad value of the element or attribute ``name`` (its wire name).

    ``value`` is repeated, cut short, unless it is None or the field is secret or a blob.
    """
    rule = _RULES.get(name)
    if rule is None:
        return InvalidEnrollmentMessage(f"{_clean(name, 80)} has a value the schema does not allow")
    if not rule.shown or value is None:
        return InvalidEnrollmentMessage(f"{name} is not {rule.what}")
    return InvalidEnrollmentMessage(f"{name} {_shown(value)} is not {rule.what}")


class _PerThread(threading.local):
    """lxml parsers and validators keep per-call state (their error log) on the object:
    one pair per thread keeps a message's errors out of another thread's answer."""

    def __init__(self) -> None:
        self.parser = etree.XMLParser(
            encoding="utf-8",  # whatever the document says; a foreign declaration is refused
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            dtd_validation=False,
            huge_tree=False,
            remove_comments=True,
            collect_ids=False,
        )
        self.schema = etree.XMLSchema(etree.fromstring(_XSD, self.parser))


_THREAD: Final = _PerThread()  # built here once so that a broken XSD fails at import

# The XML declaration is the one "<?" a message may hold; DTDs bring entities, and both
# are refused on the raw bytes before any parser sees them.
_DECLARATION = re.compile(rb"(?:\xef\xbb\xbf)?<\?xml\s[^<>]{0,256}?\?>")
_DECLARED_ENCODING = re.compile(rb"\sencoding\s*=\s*[\"']([^\"']*)[\"']")
_FORBIDDEN = re.compile(rb"<!(?i:DOCTYPE|ENTITY)|<\?")

# Schema errors about structure (not values): libxml2's wording names elements only.
_STRUCTURAL = frozenset(
    {
        "SCHEMAV_ELEMENT_CONTENT",
        "SCHEMAV_CVC_ELT_1",
        "SCHEMAV_CVC_ELT_3_1",  # xsi:nil, xsi:type: they quote the xsi value, not content
        "SCHEMAV_CVC_ELT_3_2_1",
        "SCHEMAV_CVC_ELT_3_2_2",
        "SCHEMAV_CVC_ELT_4_1",
        "SCHEMAV_CVC_ELT_4_2",
        "SCHEMAV_CVC_ELT_4_3",
        "SCHEMAV_CVC_TYPE_3_1_1",
        "SCHEMAV_CVC_TYPE_3_1_2",
        "SCHEMAV_CVC_COMPLEX_TYPE_2_1",
        "SCHEMAV_CVC_COMPLEX_TYPE_2_2",
        "SCHEMAV_CVC_COMPLEX_TYPE_2_3",
        "SCHEMAV_CVC_COMPLEX_TYPE_2_4",
        "SCHEMAV_CVC_COMPLEX_TYPE_3_2_1",
        "SCHEMAV_CVC_COMPLEX_TYPE_3_2_2",
        "SCHEMAV_CVC_COMPLEX_TYPE_4",
    }
)
_ERROR_SUBJECT = re.compile(r"Element '([^']*)'(?:, attribute '([^']*)')?")
_PATH_STEP = re.compile(r"(?:[^:/\[\]]+:)?([^:/\[\]]+)(?:\[([1-9][0-9]{0,5})\])?")
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
_LIBXML2_ERRORS: Final[dict[int, str]] = {
    code: name
    for name, code in vars(etree.ErrorTypes).items()
    if name.isupper() and isinstance(code, int)
}
_SYNTAX_WORDS: Final = {
    "ERR_DOCUMENT_EMPTY": "document is empty",
    "ERR_DOCUMENT_END": "content after the end of the root element",
    "ERR_TAG_NAME_MISMATCH": "an end tag does not match its start tag",
    "ERR_TAG_NOT_FINISHED": "the document ends inside an element (truncated?)",
    "ERR_UNDECLARED_ENTITY": "reference to an undefined entity (write & as &amp;)",
    "ERR_ENTITYREF_SEMICOL_MISSING": "an & that does not start an entity (write & as &amp;)",
    "ERR_INVALID_CHAR": "a character XML 1.0 does not allow",
    "ERR_INVALID_ENCODING": "bytes that are not UTF-8",
    "ERR_LT_IN_ATTRIBUTE": "an unescaped < in an attribute value",
    "ERR_ATTRIBUTE_REDEFINED": "an attribute given twice",
    "ERR_RESOURCE_LIMIT": "a parser limit was exceeded (elements nested too deeply?)",
    "NS_ERR_UNDEFINED_NAMESPACE": "a namespace prefix that is not declared",
}


def qualified(name: str) -> str:
    return _PREFIX + name


def local_name(element: etree._Element) -> str:
    """The name without namespace; every element of a schema-valid message is in ours."""
    tag = element.tag
    return tag[len(_PREFIX) :] if tag.startswith(_PREFIX) else etree.QName(element).localname


def _clean(message: str, limit: int = 240) -> str:
    text = _UNPRINTABLE.sub(" ", message.replace(_PREFIX, "")).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _syntax(exc: etree.XMLSyntaxError) -> str:
    # libxml2's own wording may quote document text (a comment, a CDATA section, a name),
    # which can be a passphrase: the message is built from the error's type alone.
    kind = _LIBXML2_ERRORS.get(exc.code, "")  # type: ignore[attr-defined]  # not in lxml-stubs
    words = _SYNTAX_WORDS.get(kind) or kind.removeprefix("ERR_").replace("_", " ").lower()
    line, column = exc.position
    return f"{words or 'syntax error'} (line {line}, column {column})"


def _screen(data: bytes) -> None:
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise InvalidEnrollmentMessage("message is UTF-16; the protocol uses UTF-8 only")
    start = 0
    declaration = _DECLARATION.match(data)
    if declaration is not None:
        start = declaration.end()
        encoding = _DECLARED_ENCODING.search(declaration.group())
        if encoding is not None and encoding.group(1).lower() != b"utf-8":
            named = encoding.group(1).decode("ascii", "replace")
            raise InvalidEnrollmentMessage(
                f"message declares encoding {_shown(named)}; the protocol uses UTF-8 only"
            )
    forbidden = _FORBIDDEN.search(data, start)
    if forbidden is None:
        return
    if forbidden.group() == b"<?":
        raise InvalidEnrollmentMessage(
            "message contains a processing instruction; only the XML declaration, "
            "at the very start, is allowed"
        )
    raise InvalidEnrollmentMessage(
        "message contains a DOCTYPE or ENTITY declaration; DTDs and entities are not allowed"
    )


def _node_at(root: etree._Element, path: str | None) -> etree._Element | None:
    """The element at a libxml2 error path such as ``/*/p:Parameters/*[3]``, or None.

    Walked by hand: evaluating the path as XPath fails on prefixes the document declared.
    """
    if not path or not path.startswith("/"):
        return None
    node: etree._Element | None = None
    for step in path[1:].split("/"):
        parsed = _PATH_STEP.fullmatch(step)
        if parsed is None:
            return None
        name, index = parsed.group(1), int(parsed.group(2) or 1)
        candidates = [root] if node is None else [c for c in node if isinstance(c.tag, str)]
        if name != "*":
            candidates = [c for c in candidates if etree.QName(c).localname == name]
        if len(candidates) < index:
            return None
        node = candidates[index - 1]
    return node


def _schema_failure(root: etree._Element, log: etree._ListErrorLog) -> InvalidEnrollmentMessage:
    entry = next(iter(log), None)
    subject = _ERROR_SUBJECT.match(entry.message) if entry is not None else None
    if entry is None or subject is None:
        return InvalidEnrollmentMessage("message does not follow the enrollment schema")
    if entry.type_name in _STRUCTURAL:
        return InvalidEnrollmentMessage(
            f"message does not follow the enrollment schema: {_clean(entry.message)}"
        )
    # A value error: libxml2 quotes the value, which may be a passphrase, so its wording is
    # never passed on; the rule for the element or attribute says what is wrong instead.
    element, attribute = subject.group(1), subject.group(2)
    name = attribute or element.rpartition("}")[2]
    node = _node_at(root, entry.path)
    value: str | None = None
    if node is not None and node.tag == element:
        value = (node.get(attribute) if attribute else node.text) or ""
    return invalid_value(name, value)


def parse(data: bytes, *, expected: tuple[str, ...]) -> etree._Element:
    """The schema-valid root element of ``data``, which must be one of ``expected``."""
    if not isinstance(data, bytes):
        raise TypeError(f"message must be bytes, not {type(data).__name__}")
    if not data:
        raise InvalidEnrollmentMessage("message is empty; expected an XML document")
    if len(data) > MAX_FRAME_SIZE:
        raise InvalidEnrollmentMessage(
            f"message of {len(data)} bytes exceeds the limit of {MAX_FRAME_SIZE} bytes"
        )
    _screen(data)
    try:
        root = etree.fromstring(data, _THREAD.parser)
    except etree.XMLSyntaxError as exc:
        raise InvalidEnrollmentMessage(f"message is not well-formed XML: {_syntax(exc)}") from None
    docinfo = root.getroottree().docinfo
    if docinfo.internalDTD is not None:  # set by any DOCTYPE; _screen stops them first
        raise InvalidEnrollmentMessage("message has a DOCTYPE; DTDs are not allowed")
    if docinfo.xml_version != "1.0":
        raise InvalidEnrollmentMessage(
            f"message declares XML version {_shown(docinfo.xml_version)}; the protocol uses 1.0"
        )
    if root.tag not in {qualified(name) for name in expected}:
        raise InvalidEnrollmentMessage(
            f"expected {' or '.join(expected)} in namespace {NAMESPACE}; "
            f"got {_shown(_clean(str(root.tag).replace('{', '(').replace('}', ') ')))}"
        )
    schema = _THREAD.schema
    if not schema.validate(root):
        raise _schema_failure(root, schema.error_log)
    return root


def new_root(name: str, **attributes: str) -> etree._Element:
    # lxml-stubs type nsmap without the None key that declares the default namespace.
    nsmap = {None: NAMESPACE}
    return etree.Element(qualified(name), attrib=attributes, nsmap=nsmap)  # type: ignore[arg-type]


def serialize(root: etree._Element, *, validate: bool = True) -> bytes:
    """The UTF-8 document of ``root`` after checking it against the schema (unless the
    caller built it only from values its dataclass already checked)."""
    schema = _THREAD.schema
    if validate and not schema.validate(root):
        raise _schema_failure(root, schema.error_log)
    return etree.tostring(root, encoding="UTF-8", xml_declaration=True)


# Reads only the start of the root tag, with a regular expression: nothing is parsed, so
# no entity, DTD or size trick in a hostile message can reach here.
_REQUEST_ID = re.compile(
    rb"<(?:[A-Za-z_][A-Za-z0-9_.\-]*:)?(?:Enrollment|Revocation)Request\s[^<>]*?(?<=\s)id\s*=\s*"
    rb"(?:\"([A-Za-z0-9._\-]{1,64})\"|'([A-Za-z0-9._\-]{1,64})')"
)
_REQUEST_ID_WINDOW = 4096


def request_id_of(data: bytes) -> str | None:
    """Best effort: the request id of a message that did not decode, for the error answer."""
    if not isinstance(data, bytes | bytearray | memoryview):
        return None
    match = _REQUEST_ID.search(bytes(data[:_REQUEST_ID_WINDOW]))
    if match is None:
        return None
    return (match.group(1) or match.group(2)).decode("ascii")
