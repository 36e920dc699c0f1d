"""The brokerlist: which brokers are live and how loaded, as HTTP JSON.

The service tree holds a :class:`~mmo.logic.client.Directory` watching the
yellows, a :class:`LiveBrokers` that keeps a link open to every registered
broker, and an HTTP site whose :class:`BrokerlistResource` answers from them on
each request. A broker is listed while its link is up, so a killed broker drops
out as soon as its TCP connection breaks, well before the registry expires it. A
broker an operator drained (meta ``drained: true``) is not listed: it admits no
new player. The same site serves the demo game's page under ``/game/`` (the files of
``mmo/game/static``, docs/game.md), a browser client that finds brokers here.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from twisted.application import strports
from twisted.application.service import MultiService, Service
from twisted.logger import Logger
from twisted.web import pages, resource, server
from twisted.web.resource import IResource, Resource
from typing_extensions import override

from mmo import __version__
from mmo.brokerlist.config import BrokerlistConfig
from mmo.logic.client import Directory
from mmo.ops import register_member
from mmo.registry import Change, Instance, default_instance_id
from mmo.service import OrderedMultiService
from mmo.telemetry.metrics import Metric, gauge
from mmo.wire import WireError, from_value
from mmo.zmq import ZmqContextService

with warnings.catch_warnings():
    # Twisted's static module makes its default error pages at import, with a class
    # deprecated since 22.10 (their fixed text needs no escaping).
    warnings.simplefilter("ignore", DeprecationWarning)
    from twisted.web import static

__all__ = [
    "BROKER_SERVICE",
    "GAME_DIR",
    "YOUNG",
    "BrokerSource",
    "BrokerState",
    "BrokerlistResource",
    "GameFiles",
    "LiveBrokers",
    "broker_load",
    "game_resource",
    "make_brokerlist_service",
]

log = Logger()

#: The registry service brokers register under.
BROKER_SERVICE = "broker"
#: Seconds a newly seen broker is listed while its link is still coming up.
YOUNG = 1.0
#: The demo game's files (the page, its script and styles, the vendored JS SDK).
GAME_DIR = Path(__file__).resolve().parent.parent / "game" / "static"
#: The path segment the game is served under.
GAME_PATH = b"game"
#: The game's content security policy: its own files (and an empty icon); fetches to this
#: origin, WebSockets to the brokers (on other ports, or hosts).
GAME_POLICY = (
    b"default-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; base-uri 'none'; "
    b"frame-ancestors 'none'; form-action 'none'"
)


@dataclass(frozen=True)
class BrokerState:
    """What the brokerlist knows of one registered broker instance.

    Attributes:
        instance_id: the broker's instance id in the registry.
        address: its TCP client address ``host:port`` (meta ``address``), or None.
        websocket: its WebSocket client address ``host:port`` (meta ``websocket``), or None.
        load: its load, ``sessions / capacity`` (meta ``load``).
        up: whether this process's link to the broker's ``rep`` socket is connected
            (false while it drains).
        listed: whether ``GET /`` lists it (it has an address and a live link, and is
            not drained: meta ``draining``).
        age: seconds since this process first saw the instance (inf if unknown).
        meta: its registry metadata, decoded.
        tls: those of its addresses that speak TLS (meta ``tls``).
    """

    instance_id: str
    address: str | None
    websocket: str | None
    load: float
    up: bool
    listed: bool
    age: float
    meta: dict[str, Any] = field(default_factory=dict)
    tls: frozenset[str] = frozenset()


class BrokerSource(Protocol):
    """What :class:`BrokerlistResource` reads: a view of the registered brokers."""

    @property
    def synced(self) -> bool:
        """Whether the registry has been read at least once."""
        ...

    def brokers(self) -> list[BrokerState]:
        """Every registered broker, listed or not."""
        ...


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and number >= 0 else None


def broker_load(meta: Mapping[str, Any]) -> float:
    """A broker's load from its metadata: ``load``, else ``sessions / capacity``, else 0."""
    load = _number(meta.get("load"))
    if load is not None:
        return load
    sessions, capacity = _number(meta.get("sessions")), _number(meta.get("capacity"))
    if sessions is not None and capacity:
        return sessions / capacity
    return 0.0


def _decode_meta(instance: Instance) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for key, value in (instance.meta or {}).items():
        try:
            meta[key] = from_value(value)
        except WireError:
            # One undecodable entry must not hide the broker's other fields.
            continue
    return meta


class LiveBrokers(Service):
    """The registered brokers and whether each one's link is up.

    While running, the directory keeps one DEALER link per broker instance and
    tracks its state through ZeroMQ monitor events; nothing is ever sent on it.

    Args:
        directory: the process's directory (its view watches the yellows).
        service: the registry service brokers register under.
        young: seconds a newly seen broker is listed before its link is up.
    """

    def __init__(
        self, directory: Directory, service: str = BROKER_SERVICE, young: float = YOUNG
    ) -> None:
        self.directory = directory
        self.service = service
        self.young = young
        # instance id -> (rep endpoint, when first seen with it)
        self._seen: dict[str, tuple[str | None, float]] = {}
        directory.view.listen(self._changed)

    @override
    def startService(self) -> None:
        """Open links to every broker instance, now and as they register."""
        super().startService()
        # Keep a link to every broker: a killed one drops out when its link breaks.
        self.directory.links(self.service)
        log.info(
            "brokerlist: watching {service} instances via {yellows}",
            service=self.service,
            yellows=", ".join(self.directory.view.yellows),
        )

    @property
    def synced(self) -> bool:
        """Whether the directory has read the registry at least once."""
        return bool(self.directory.view.synced)

    def _changed(self, change: int, instance: Instance, reason: str) -> None:
        if instance.service_name != self.service:
            return
        iid = instance.instance_id
        if change == Change.DOWN:
            self._seen.pop(iid, None)
            return
        rep = (instance.endpoints or {}).get("rep")
        known = self._seen.get(iid)
        if known is None or known[0] != rep:
            # New, or restarted on a new port: its (new) link starts from scratch.
            self._seen[iid] = (rep, self.directory.clock.seconds())

    def metrics(self) -> Iterator[Metric]:
        """The brokers it lists (a metrics source)."""
        states = self.brokers()
        yield gauge(
            "mmo_brokerlist_brokers",
            "Brokers registered, by whether clients are told of them (listed).",
            ("listed",),
            [
                (("yes",), sum(b.listed for b in states)),
                (("no",), sum(not b.listed for b in states)),
            ],
        )

    def brokers(self) -> list[BrokerState]:
        """Every broker instance in the registry, in instance id order."""
        now = self.directory.clock.seconds()
        links = self.directory.links(self.service)
        states = []
        for instance in sorted(self.directory.view.get(self.service), key=_instance_id):
            iid = instance.instance_id
            meta = _decode_meta(instance)
            address = _host_port(meta.get("address"))
            up = links.get(iid, False)
            seen = self._seen.get(iid)
            age = now - seen[1] if seen is not None else math.inf
            # A link takes a moment to connect: a broker seen less than `young` ago is
            # listed whatever its link says (bounded: one killed in that time drops out
            # when it ends). After that, only the link counts.
            young = iid in links and age < self.young
            drained = meta.get("drained") is True
            states.append(
                BrokerState(
                    instance_id=iid,
                    address=address,
                    websocket=_host_port(meta.get("websocket")),
                    load=broker_load(meta),
                    up=up,
                    listed=address is not None and (up or young) and not drained,
                    age=age,
                    meta=meta,
                    tls=frozenset(a for a in meta.get("tls") or () if isinstance(a, str)),
                )
            )
        return states


def _instance_id(instance: Instance) -> str:
    return str(instance.instance_id)


def _host_port(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _jsonable(obj: Any) -> Any:
    """Registry metadata made JSON-safe: bytes as hex, non-finite floats as null."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, bytes):
        return obj.hex()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


class GameFiles(static.File):
    """The game's static files: no directory listing (a directory without ``index.html``
    is 404), the content types of the page's files set here rather than by the host's
    ``mime.types``, ``Cache-Control: no-cache`` (a page reloaded after an upgrade gets the
    new scripts) and a content security policy: the page's own files only, and its
    connections to this origin (the brokerlist) and to brokers' WebSockets."""

    contentTypes = {
        **static.File.contentTypes,
        ".html": "text/html; charset=utf-8",
        ".js": "text/javascript; charset=utf-8",
        ".css": "text/css; charset=utf-8",
    }
    indexNames = ["index.html"]

    @override
    def directoryListing(self) -> IResource:
        """No listing: a directory without an index is not found."""
        return pages.notFound()

    @override
    def render(self, request: server.Request) -> bytes | int:
        """Serve the file (or redirect a directory to its slashed path), never cached unchecked."""
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"content-security-policy", GAME_POLICY)
        result: bytes | int = super().render(request)
        return result


def game_resource(directory: Path = GAME_DIR) -> GameFiles:
    """The resource serving the game's files from ``directory``."""
    return GameFiles(str(directory))


class BrokerlistResource(Resource):
    """Answers ``GET /`` (the broker list) and ``GET /status`` (every broker's record);
    with ``game``, hands the paths under ``/game`` to it (the demo game's page).

    ``GET /`` is ``{"version": ..., "brokerList": {"host:port": load, ...},
    "websocketList": {"host:port": load, ...}, "tls": ["host:port", ...]}``, least
    loaded first: the same brokers' TCP and WebSocket client addresses, and those of
    them that speak TLS (connect with TLS, or ``wss://``). Other paths are 404, other methods
    405 (``HEAD`` is allowed), and before the registry has been read both paths are
    503 with ``Retry-After: 1``. Every answer, errors too, is ``application/json``.

    Args:
        source: the brokers (a :class:`LiveBrokers`).
        version: the version announced (mmo's by default).
        game: what serves ``/game`` and the paths under it (a :class:`GameFiles`);
            None: those are 404 like any other path.
    """

    isLeaf = True
    allowed_methods = (b"GET", b"HEAD")

    def __init__(
        self,
        source: BrokerSource,
        version: str = __version__,
        *,
        game: IResource | None = None,
    ) -> None:
        super().__init__()
        self.source = source
        self.version = version
        self.game = game

    @override
    def render(self, request: server.Request) -> bytes | int:
        """Dispatch on path and method; always answer with JSON (but for the game's files)."""
        if self.game is not None and request.postpath and request.postpath[0] == GAME_PATH:
            # Traversal from here, as Site does from its root: /game -> /game/ (a redirect),
            # /game/ -> index.html, /game/sdk/index.js -> that file.
            request.prepath = [*(request.prepath or []), request.postpath.pop(0)]
            child = resource.getChildForRequest(self.game, request)
            rendered: bytes | int = child.render(request)
            return rendered
        path = b"/".join(request.postpath or [b""])
        if path not in (b"", b"status"):
            return self._answer(request, 404, {"error": "not found"})
        if request.method not in self.allowed_methods:
            request.setHeader(b"allow", b", ".join(self.allowed_methods))
            return self._answer(request, 405, {"error": "method not allowed"})
        if not self.source.synced:
            request.setHeader(b"retry-after", b"1")
            return self._answer(request, 503, {"error": "the registry has not answered yet"})
        brokers = self.source.brokers()
        if path == b"status":
            return self._answer(request, 200, self.status(brokers))
        return self._answer(request, 200, self.broker_list(brokers))

    def broker_list(self, brokers: list[BrokerState]) -> dict[str, Any]:
        """The body of ``GET /``: the listed brokers' client addresses and loads."""
        listed = sorted((b for b in brokers if b.listed), key=lambda b: (b.load, b.address or ""))
        return {
            "version": self.version,
            "brokerList": {b.address: b.load for b in listed if b.address is not None},
            # Browser clients cannot use the TCP address: the same brokers' WebSocket ones.
            "websocketList": {b.websocket: b.load for b in listed if b.websocket is not None},
            "tls": sorted({a for b in listed for a in b.tls}),
        }

    def status(self, brokers: list[BrokerState]) -> dict[str, Any]:
        """The body of ``GET /status``: every registered broker, listed or not."""
        return {
            "version": self.version,
            "brokers": {
                b.instance_id: {
                    "address": b.address,
                    "websocket": b.websocket,
                    "load": b.load,
                    "up": b.up,
                    "listed": b.listed,
                    "age": round(b.age, 3) if math.isfinite(b.age) else None,
                    "meta": _jsonable(b.meta),
                }
                for b in brokers
            },
        }

    def _answer(self, request: server.Request, code: int, body: dict[str, Any]) -> bytes:
        data = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        # Browser (WebSocket) clients fetch the list from their page's own origin.
        request.setHeader(b"access-control-allow-origin", b"*")
        if request.method == b"HEAD":
            request.setHeader(b"content-length", b"%d" % len(data))
            return b""
        return data


def make_brokerlist_service(config: BrokerlistConfig, *, reactor: Any = None) -> MultiService:
    """Build (without starting) the service tree of a brokerlist process."""
    top = OrderedMultiService()
    zmq_service = ZmqContextService(reactor)
    zmq_service.setServiceParent(top)
    ctx = zmq_service.context
    instance_id = default_instance_id("brokerlist")
    directory = Directory(ctx, config.yellow, caller_id=instance_id, caller_role="brokerlist")
    directory.setName("directory")
    directory.setServiceParent(top)
    brokers = LiveBrokers(directory)
    brokers.setName("brokers")
    brokers.setServiceParent(top)
    site = server.Site(BrokerlistResource(brokers, game=game_resource()))
    http = strports.service(config.listen, site, reactor=ctx.reactor)
    http.setName("http")
    http.setServiceParent(top)
    telemetry = register_member(top, ctx, config.yellow, "brokerlist", instance_id, directory)
    telemetry.add_metrics(brokers.metrics)
    return top
