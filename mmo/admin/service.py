"""The service tree of the admin console: ZeroMQ, directory, the cluster's state, the web."""

from __future__ import annotations

from typing import Any

from twisted.application import strports
from twisted.web import server

from mmo.admin.accounts import Accounts
from mmo.admin.config import AdminConfig
from mmo.admin.state import ClusterState
from mmo.admin.web import Console
from mmo.config import demo_mode
from mmo.logic.client import Directory
from mmo.ops import register_member
from mmo.registry import default_instance_id
from mmo.service import OrderedMultiService
from mmo.zmq import ZmqContextService

__all__ = ["make_admin_service"]


def make_admin_service(
    config: AdminConfig, *, reactor: Any = None, extra: tuple[str, ...] = ()
) -> OrderedMultiService:
    """Build (without starting) the console's tree.

    Args:
        extra: operator listeners the registry does not list (the yellows').

    Raises:
        ConfigError: no admin account (outside ``MMO_DEMO=1``), or a bad accounts file.
    """
    accounts = Accounts.load(config.accounts, demo=demo_mode())
    instance_id = default_instance_id("admin")
    top = OrderedMultiService()
    zmq_service = ZmqContextService(reactor)
    zmq_service.setServiceParent(top)
    ctx = zmq_service.context
    directory = Directory(ctx, config.yellow, caller_id=instance_id, caller_role="admin")
    directory.setName("directory")
    directory.setServiceParent(top)
    state = ClusterState(directory, config.poll, config.history, extra)
    state.setName("state")
    state.setServiceParent(top)
    console = Console(
        state,
        directory,
        accounts,
        secure=config.secure,
        session_ttl=config.session_ttl,
        instance_id=instance_id,
    )
    site = server.Site(console)
    site.displayTracebacks = False
    site.log = lambda request: None  # type: ignore[method-assign] # actions are audited
    web = strports.service(config.listen, site, reactor=ctx.reactor)
    web.setName("web")
    web.setServiceParent(top)
    register_member(top, ctx, config.yellow, "admin", instance_id, directory)
    return top
