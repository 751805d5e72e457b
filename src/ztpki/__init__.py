"""ztpki: zero-touch device PKI (WO 02/065696 with EST and XML enrollment on the wire)."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    # ztpki.__version__ for tools that look for it, read from the package metadata (the one
    # source) only when asked, so that importing ztpki does not pay for importlib.metadata.
    if name == "__version__":
        from ztpki.versions import ztpki_version

        return ztpki_version()
    raise AttributeError(f"module 'ztpki' has no attribute {name!r}")
