"""The demo: the whole factory-to-customer flow on loopback, as separate processes."""

from ztpki.demo.processes import ServiceFailed, ServiceProcess, start_service

__all__ = ["ServiceFailed", "ServiceProcess", "start_service"]
