"""PKCS#11 URIs (RFC 7512): which token, which key object, which module.

Sans-I/O: text in, a frozen ``Pkcs11Uri`` out, or MalformedInput naming what is wrong.
A PIN inside the URI (``pin-value``) is refused: a URI ends up in configuration files and
in `ztpki ca list`, so the PIN comes from ZTPKI_PKCS11_PIN or a file instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote_to_bytes

from ztpki.errors import MalformedInput

SCHEME = "pkcs11:"

# RFC 7512 2.3: the path attributes, in the order the RFC lists them.
_PATH = (
    "token",
    "manufacturer",
    "serial",
    "model",
    "library-manufacturer",
    "library-description",
    "library-version",
    "object",
    "type",
    "id",
    "slot-description",
    "slot-manufacturer",
    "slot-id",
)
_QUERY = ("pin-source", "pin-value", "module-name", "module-path")
_TYPES = ("public", "private", "cert", "secret-key", "data")
# RFC 3986 unreserved characters plus those RFC 7512 allows unescaped in a path value.
_SAFE_PATH = "-._~:[]@!$'()*+,="
_MAX_LENGTH = 4096


@dataclass(frozen=True)
class Pkcs11Uri:
    """The parsed attributes of one PKCS#11 URI (absent ones are None)."""

    token: str | None = None
    manufacturer: str | None = None
    serial: str | None = None
    model: str | None = None
    object: str | None = None
    type: str | None = None
    id: bytes | None = None
    slot_id: int | None = None
    module_path: str | None = None
    module_name: str | None = None
    pin_source: str | None = None

    @classmethod
    def parse(cls, text: str) -> Pkcs11Uri:
        """A URI such as ``pkcs11:token=ca;object=root-key``; MalformedInput if it is not one."""
        if len(text) > _MAX_LENGTH:
            raise MalformedInput("the PKCS#11 URI is longer than 4096 characters")
        if not text.lower().startswith(SCHEME):
            raise MalformedInput(
                "a PKCS#11 URI starts with 'pkcs11:' (RFC 7512), e.g. "
                "'pkcs11:token=ca;object=root-key'"
            )
        path, _, query = text[len(SCHEME) :].partition("?")
        values: dict[str, bytes] = {}
        for part, separator, allowed in ((path, ";", _PATH), (query, "&", _QUERY)):
            for item in part.split(separator) if part else ():
                name, equals, raw = item.partition("=")
                if not equals:
                    raise MalformedInput(f"PKCS#11 URI attribute {name[:40]!r} has no '=value'")
                if name.startswith("x-"):  # vendor attributes (RFC 7512 2.3): not ours
                    continue
                if name not in allowed:
                    raise MalformedInput(
                        f"unknown PKCS#11 URI attribute {name[:40]!r}; known: {', '.join(allowed)}"
                    )
                if name in values:
                    raise MalformedInput(f"PKCS#11 URI attribute {name!r} is given twice")
                values[name] = _unescape(raw, name)
        if "pin-value" in values:
            raise MalformedInput(
                "the PKCS#11 URI carries a PIN (pin-value); give the PIN in ZTPKI_PKCS11_PIN "
                "or a file instead, so it never lands in a configuration file or a listing"
            )
        kind = _text(values, "type")
        if kind is not None and kind not in _TYPES:
            raise MalformedInput(f"PKCS#11 URI type {kind!r} is not one of {', '.join(_TYPES)}")
        slot = _text(values, "slot-id")
        if slot is not None and not (slot.isascii() and slot.isdigit()):
            raise MalformedInput("PKCS#11 URI slot-id must be a decimal number")
        return cls(
            token=_text(values, "token"),
            manufacturer=_text(values, "manufacturer"),
            serial=_text(values, "serial"),
            model=_text(values, "model"),
            object=_text(values, "object"),
            type=kind,
            id=values.get("id"),
            slot_id=int(slot) if slot is not None else None,
            module_path=_text(values, "module-path"),
            module_name=_text(values, "module-name"),
            pin_source=_text(values, "pin-source"),
        )

    def require_key(self) -> Pkcs11Uri:
        """This URI, checked to name one private key: a token and an object label or id."""
        if self.token is None and self.serial is None and self.slot_id is None:
            raise MalformedInput(
                "the PKCS#11 URI names no token: add token=LABEL (or serial=, slot-id=)"
            )
        if self.object is None and self.id is None:
            raise MalformedInput(
                "the PKCS#11 URI names no key object: add object=LABEL (or id=%01...)"
            )
        if self.type not in (None, "private"):
            raise MalformedInput(f"the PKCS#11 URI names a {self.type} object, not a private key")
        return self

    def with_object(self, label: str) -> Pkcs11Uri:
        """The same token, naming the key object ``label`` (and no id)."""
        return Pkcs11Uri(**{**self.__dict__, "object": label, "id": None, "type": None})

    @property
    def text(self) -> str:
        """The URI in canonical form (RFC 7512 order, percent-encoded), never with a PIN."""
        path: list[str] = []
        for name in _PATH:
            value = self._value(name)
            if value is not None:
                # An id is bytes, not text: every octet escaped, as RFC 7512's examples do.
                escaped = "".join(f"%{b:02X}" for b in value) if name == "id" else None
                path.append(f"{name}={escaped or quote(value, safe=_SAFE_PATH)}")
        query: list[str] = []
        for name in ("pin-source", "module-name", "module-path"):
            value = self._value(name)
            if value is not None:
                query.append(f"{name}={quote(value, safe=_SAFE_PATH + '/')}")
        return SCHEME + ";".join(path) + ("?" + "&".join(query) if query else "")

    def _value(self, name: str) -> bytes | None:
        value = getattr(self, name.replace("-", "_"), None)
        if value is None:
            return None
        if isinstance(value, bytes):
            return value
        return str(value).encode()

    def __str__(self) -> str:
        return self.text


def _unescape(raw: str, name: str) -> bytes:
    if "%" in raw:
        for at in range(len(raw)):
            if raw[at] == "%" and not _is_hex(raw[at + 1 : at + 3]):
                raise MalformedInput(f"PKCS#11 URI attribute {name!r} has a broken %-escape")
    return unquote_to_bytes(raw)


def _is_hex(pair: str) -> bool:
    return len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair)


def _text(values: dict[str, bytes], name: str) -> str | None:
    raw = values.get(name)
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedInput(f"PKCS#11 URI attribute {name!r} is not UTF-8 text") from None


__all__ = ["Pkcs11Uri"]
