"""The logic layer: service handlers, the worker that serves them, and how to call them."""

from mmo.logic.client import Directory, connect, get_service
from mmo.logic.handler import Context, ServiceHandler, idempotent

__all__ = ["Context", "Directory", "ServiceHandler", "connect", "get_service", "idempotent"]
