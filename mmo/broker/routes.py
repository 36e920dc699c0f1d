"""What players may call at a broker: the client routes handlers declare, narrowed by config.

Each worker registers the methods its handler declares for logged-in players
(registry metadata ``client``, see :func:`mmo.logic.client_method`). A
:class:`RouteTable` follows the registry and answers, for a route
``prefix.method``, whether a logged-in player may call it: the prefix
names a service (``[broker] routes`` maps prefixes to other names), the service
must have a live instance declaring the method, and the listener the player came
in on must accept the route (:class:`RoutePatterns`). Anything else is refused
exactly as a route that does not exist. (Before login a broker serves only the
routes its config names, which the worker takes only if they are login methods.)
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping

from mmo.registry import Instance, RegistryView, meta_names

__all__ = ["RoutePatterns", "RouteTable"]

_NONE: frozenset[str] = frozenset()


class RouteTable:
    """The routes players may call, kept current from the registry.

    Args:
        view: the registry view it follows (it listens to it from the start).
        routes: route prefix -> service name, where they differ (``[broker] routes``).

    Attributes:
        client: service -> methods a logged-in player may call (the union over its
            live instances: the worker checks again, so a rolling upgrade is safe).
            When the last instance of a service leaves, its methods stay: a player's
            request then fails as ``UNAVAILABLE`` (the service is down), not as a route
            that does not exist. What a player can learn that way is only what handlers
            declared for players.
    """

    def __init__(self, view: RegistryView, routes: Mapping[str, str] | None = None) -> None:
        self.view = view
        self.routes = dict(routes or {})
        self.client: dict[str, frozenset[str]] = {}
        view.listen(self.changed)

    def service_of(self, prefix: str) -> str:
        """The service a route prefix names."""
        return self.routes.get(prefix, prefix)

    def target(self, route: str) -> tuple[str, str, str] | None:
        """``(prefix, service, method)`` of a route a logged-in player may call, or None."""
        prefix, dot, method = route.partition(".")
        if not dot or not prefix or not method:
            return None
        service = self.routes.get(prefix, prefix)
        if method not in self.client.get(service, _NONE):
            return None
        return prefix, service, method

    def changed(self, change: int, instance: Instance, reason: str = "") -> None:
        """Registry listener: an instance came up, changed or went down (the view has
        applied it already)."""
        service = instance.service_name
        instances = self.view.instances.get(service)
        if not instances:
            # Down, not gone: keep what it declared (bounded by the services ever seen).
            return
        client = frozenset().union(*(meta_names(i, "client") for i in instances.values()))
        if client:
            self.client[service] = client
        else:
            self.client.pop(service, None)


class RoutePatterns:
    """The routes one listener accepts: shell-style patterns (``chat.*``, ``sso.login``);
    ``*`` alone accepts every route the handlers declare.

    Args:
        patterns: the listener's patterns (``[broker] listen-routes`` or ``websocket-routes``).
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        self.set(patterns)

    def set(self, patterns: Iterable[str]) -> None:
        """Accept ``patterns`` from now on (a reload): the connections that came in on the
        listener ask the same object, so they follow from their next request."""
        self.patterns = tuple(patterns)
        self.everything = "*" in self.patterns
        # Only declared routes are ever asked about, so this stays small.
        self._known: dict[str, bool] = {}

    def accepts(self, route: str) -> bool:
        """Whether the listener accepts ``route``."""
        if self.everything:
            return True
        known = self._known.get(route)
        if known is None:
            known = self._known[route] = any(fnmatch.fnmatchcase(route, p) for p in self.patterns)
        return known
