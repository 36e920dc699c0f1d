"""The logic layer: service handlers, the worker that serves them, and how to call them."""

from mmo.logic.client import Directory, connect, get_service
from mmo.logic.handler import (
    OPERATOR_ROLES,
    Context,
    NoSettings,
    ServiceHandler,
    callers,
    client_method,
    idempotent,
    login_method,
)

__all__ = [
    "OPERATOR_ROLES",
    "Context",
    "Directory",
    "NoSettings",
    "ServiceHandler",
    "callers",
    "client_method",
    "connect",
    "get_service",
    "idempotent",
    "login_method",
]
