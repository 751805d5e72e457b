"""ztpki: zero-touch device PKI (WO 02/065696 with EST and XML enrollment on the wire)."""

__version__ = "0.1.0"
