"""A signed manifest of any size (up to MAX_ENTRIES devices) read in pieces, in bounded memory.

The same file as `ztpki.protocol.manifest` reads whole, checked the same way, but never held:
the reader is given ``read``, a function returning the file's bytes as an iterator of pieces
(opened anew on each call), and goes over it in passes:

1. ``check_manifest_file``: the container (the exact bytes ``sign_jws`` writes), then the
   signature over the payload as it streams by, the payload's shape and its members other
   than the devices, the signer's chain to the trust bundle of the manufacturer the manifest
   names, and the signer's right to sign for it. Nothing is trusted before all of this passed.
2. ``manifest_file_entries``: the device entries, one at a time, each checked (content,
   manufacturer's namespace) as it comes. The file's SHA-256 must still be what the first
   pass verified, which the iterator checks after its last entry: a consumer that stores the
   entries in one all-or-nothing unit keeps nothing of a file that changed in between.

An EdDSA signature has no pre-hashed form, so its signing input is kept in memory while it is
checked (about 4/3 of the payload); ES256, ES384 and RS256 signatures stream.
Duplicate device ids are left to the consumer (the register's staging table sees them).
Sans-I/O: pieces of bytes in, checked values out, the clock passed in as ``now``.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509

from ztpki.errors import MalformedInput, VerificationFailed
from ztpki.protocol.jws import SignatureCheck, b64url_decode, strict_decoder
from ztpki.protocol.manifest import (
    MANIFEST_TYPE,
    MAX_ENTRIES,
    Manifest,
    ManifestEntry,
    ManufacturerTrust,
    manifest_from_document,
    parse_manifest_entry,
    trusted_signer,
)

# 1,000,000 entries with long models and batches stay below it; the file is never held.
MAX_MANIFEST_FILE_BYTES = 1024 * 1024 * 1024
# The largest single JSON value (a device entry, a member) the reader buffers.
_MAX_VALUE_CHARS = 1024 * 1024
_MAX_HEADER_CHARS = 64 * 1024
_MAX_SIGNATURE_CHARS = 1024

ReadFile = Callable[[], Iterator[bytes]]

# The container, byte for byte as sign_jws writes it (compact JSON, sorted members).
_PREFIX = b'{"payload":"'
_PROTECTED = b'","protected":"'
_SIGNATURE = b'","signature":"'
_END = b'"}\n'
_B64URL = re.compile(rb"[A-Za-z0-9_-]*")
_WHITESPACE = re.compile(r"[ \t\n\r]*")


@dataclass(frozen=True)
class CheckedManifest:
    """A manifest file whose signature, signer and members verified (first pass).

    ``manifest`` holds every member but the devices (its ``entries`` are empty): they stream
    through ``manifest_file_entries``. ``digest``: SHA-256 of the file that was verified.
    """

    manifest: Manifest
    device_count: int
    signer: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    trust: ManufacturerTrust
    digest: bytes


def _not_as_written() -> MalformedInput:
    return MalformedInput("manifest file is not exactly as ztpki writes it (edited?)")


class _FileBytes:
    """The file's pieces, walked through the container's fixed layout; hashed as read."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self._buf = b""
        self._pos = 0
        self._digest = hashlib.sha256()
        self._size = 0

    def _more(self) -> bool:
        for piece in self._pieces:
            if piece:
                self._size += len(piece)
                if self._size > MAX_MANIFEST_FILE_BYTES:
                    raise MalformedInput(f"manifest is larger than {MAX_MANIFEST_FILE_BYTES} bytes")
                self._digest.update(piece)
                self._buf = self._buf[self._pos :] + piece
                self._pos = 0
                return True
        return False

    def literal(self, expected: bytes) -> None:
        while len(self._buf) - self._pos < len(expected):
            if not self._more():
                raise _not_as_written()
        if self._buf[self._pos : self._pos + len(expected)] != expected:
            raise _not_as_written()
        self._pos += len(expected)

    def base64url(self, what: str, *, limit: int | None) -> Iterator[bytes]:
        """The pieces of a base64url string up to its closing quote (left for ``literal``)."""
        length = 0
        while True:
            end = self._buf.find(b'"', self._pos)
            piece = self._buf[self._pos : end if end >= 0 else len(self._buf)]
            if not _B64URL.fullmatch(piece):
                raise MalformedInput(f"{what} is not base64url without padding")
            length += len(piece)
            if limit is not None and length > limit:
                raise MalformedInput(f"{what} is longer than {limit} characters")
            self._pos += len(piece)
            if piece:
                yield piece
            if end >= 0:
                return
            if not self._more():
                raise _not_as_written()

    def text(self, what: str, *, limit: int) -> str:
        return b"".join(self.base64url(what, limit=limit)).decode("ascii")

    def finish(self) -> bytes:
        """The file's SHA-256, once nothing follows the container."""
        if self._pos < len(self._buf) or self._more():
            raise _not_as_written()
        return self._digest.digest()


def _container(read: ReadFile) -> tuple[str, str, bytes]:
    """(protected header, signature, file digest): the payload is only scanned."""
    file = _FileBytes(read())
    file.literal(_PREFIX)
    for _ in file.base64url("manifest payload", limit=None):
        pass
    file.literal(_PROTECTED)
    protected = file.text("manifest header", limit=_MAX_HEADER_CHARS)
    file.literal(_SIGNATURE)
    signature = file.text("manifest signature", limit=_MAX_SIGNATURE_CHARS)
    file.literal(_END)
    return protected, signature, file.finish()


def _payload(read: ReadFile, digest: bytes) -> Iterator[bytes]:
    """The payload's base64url pieces, read again; then the file must be the one verified."""
    file = _FileBytes(read())
    file.literal(_PREFIX)
    yield from file.base64url("manifest payload", limit=None)
    file.literal(_PROTECTED)
    file.text("manifest header", limit=_MAX_HEADER_CHARS)
    file.literal(_SIGNATURE)
    file.text("manifest signature", limit=_MAX_SIGNATURE_CHARS)
    file.literal(_END)
    if file.finish() != digest:
        raise MalformedInput("the manifest file changed while it was read; import it again")


def _decoded(pieces: Iterator[bytes]) -> Iterator[str]:
    """base64url pieces -> pieces of the UTF-8 text they encode (strict, canonical)."""
    utf8 = codecs.getincrementaldecoder("utf-8")("strict")
    carry = b""
    try:
        for piece in pieces:
            data = carry + piece
            cut = len(data) - len(data) % 4
            carry = data[cut:]
            if cut:
                yield utf8.decode(base64.urlsafe_b64decode(data[:cut]))
        # The last group alone may be short: it must be canonical base64url.
        tail = b64url_decode(carry.decode("ascii"), "manifest payload") if carry else b""
        yield utf8.decode(tail, final=True)
    except UnicodeDecodeError:
        raise MalformedInput("manifest payload is not strict UTF-8 JSON") from None


class _JsonWalk:
    """The payload's JSON object, walked value by value: ``devices`` yields the entries of
    its ``devices`` array as they are decoded; the other members end up in ``members``."""

    def __init__(self, texts: Iterator[str], *, strict_devices: bool = True) -> None:
        self._texts = texts
        self._buf = ""
        self._pos = 0
        self._decoder = strict_decoder()
        # Device entries only counted (the first pass) need no strict decoding: the second
        # pass decodes each strictly before it is used. json's C scanner runs without hooks.
        self._device_decoder = self._decoder if strict_devices else json.JSONDecoder()
        self.members: dict[str, Any] = {}
        self.count = 0

    def _more(self) -> bool:
        for text in self._texts:
            if text:
                self._buf = self._buf[self._pos :] + text
                self._pos = 0
                return True
        return False

    def _peek(self) -> str:
        """The next character that is not whitespace ("" at the end)."""
        # What ztpki writes has no whitespace: answer that case without the pattern.
        if self._pos < len(self._buf) and self._buf[self._pos] not in " \t\n\r":
            return self._buf[self._pos]
        while True:
            self._pos = _WHITESPACE.match(self._buf, self._pos).end()  # type: ignore[union-attr]
            if self._pos < len(self._buf):
                return self._buf[self._pos]
            if not self._more():
                return ""

    def _take(self, char: str) -> None:
        if self._peek() != char:
            raise MalformedInput("manifest payload is not strict UTF-8 JSON")
        self._pos += 1

    def _value(self, decoder: json.JSONDecoder | None = None) -> Any:
        decoder = decoder or self._decoder
        self._peek()
        while True:
            if len(self._buf) - self._pos > _MAX_VALUE_CHARS:
                raise MalformedInput(
                    f"manifest payload holds a value longer than {_MAX_VALUE_CHARS} characters"
                )
            try:
                value, end = decoder.raw_decode(self._buf, self._pos)
            except json.JSONDecodeError:
                # Perhaps only cut short by the end of the piece: read on, then decide.
                if self._more():
                    continue
                raise MalformedInput("manifest payload is not strict UTF-8 JSON") from None
            except MalformedInput as exc:
                raise MalformedInput(f"manifest payload: {exc.message}") from None
            except RecursionError:
                raise MalformedInput("manifest payload is not strict UTF-8 JSON") from None
            # A number ending with the piece may go on in the next one.
            if end == len(self._buf) and self._more():
                continue
            self._pos = end
            return value

    def devices(self) -> Iterator[object]:
        self._take("{")
        seen = self.members
        devices_seen = False
        if self._peek() == "}":
            self._pos += 1
        else:
            while True:
                name = self._value()
                if not isinstance(name, str):
                    raise MalformedInput("manifest payload is not strict UTF-8 JSON")
                if name in seen or (name == "devices" and devices_seen):
                    raise MalformedInput(f"manifest payload: member {name[:32]!r} appears twice")
                self._take(":")
                if name == "devices":
                    devices_seen = True
                    yield from self._array()
                else:
                    seen[name] = self._value()
                if self._closes("}"):
                    break
        if self._peek() != "":
            raise MalformedInput("manifest payload is not strict UTF-8 JSON")
        if devices_seen:
            seen["devices"] = []

    def _closes(self, closing: str) -> bool:
        """Past the separator after a value: True for ``closing``, False for a comma."""
        following = self._peek()
        self._pos += 1
        if following not in (closing, ","):
            raise MalformedInput("manifest payload is not strict UTF-8 JSON")
        return following == closing

    def _array(self) -> Iterator[object]:
        if self._peek() != "[":
            raise MalformedInput("manifest member 'devices' is not a list")
        self._pos += 1
        if self._peek() == "]":
            self._pos += 1
            return
        while True:
            self.count += 1
            if self.count > MAX_ENTRIES:
                raise MalformedInput(f"manifest lists more than {MAX_ENTRIES} devices")
            yield self._value(self._device_decoder)
            if self._closes("]"):
                return


def check_manifest_file(
    read: ReadFile, *, manufacturers: Sequence[ManufacturerTrust], now: datetime
) -> CheckedManifest:
    """The first pass: everything but the device entries verified (see the module's text).

    MalformedInput and VerificationFailed as ``verify_manifest`` raises them; a payload that
    does not parse is reported as altered when its signature does not verify either.
    """
    protected, signature, digest = _container(read)
    check = SignatureCheck(protected, signature, typ=MANIFEST_TYPE, what="manifest")

    def signed() -> Iterator[bytes]:
        for piece in _payload(read, digest):
            check.update(piece)
            yield piece

    pieces = signed()
    walk = _JsonWalk(_decoded(pieces), strict_devices=False)
    try:
        for _ in walk.devices():
            pass
    except MalformedInput:
        # The payload is read to its end, so a forged one is called that, not malformed.
        for _ in pieces:
            pass
        check.verify()
        raise
    chain = check.verify()
    # The members are checked only now, after the signature: nothing of them is used before.
    manifest = manifest_from_document(walk.members, entries=())
    trust, path = trusted_signer(manifest.manufacturer, chain, manufacturers, now=now)
    return CheckedManifest(
        manifest=manifest,
        device_count=walk.count,
        signer=chain[0],
        chain=path,
        trust=trust,
        digest=digest,
    )


def manifest_file_entries(read: ReadFile, checked: CheckedManifest) -> Iterator[ManifestEntry]:
    """The second pass: the device entries in file order, each checked as it comes.

    MalformedInput for an entry that is not a valid device or a file that changed since
    ``checked`` (raised after the last entry); VerificationFailed for a device id outside the
    manufacturer's namespace.
    """
    namespace = checked.trust.device_ids
    walk = _JsonWalk(_decoded(_payload(read, checked.digest)))
    for value in walk.devices():
        entry = parse_manifest_entry(value)
        if not namespace.covers(entry.device_id):
            raise VerificationFailed(
                f"the manifest lists device id {entry.device_id} outside manufacturer "
                f"{checked.trust.name}'s namespace ({namespace})"
            )
        yield entry
    if walk.count != checked.device_count:
        raise MalformedInput("the manifest file changed while it was read; import it again")
