"""A fake :class:`~mmo.logic.client.Directory`: scripted services, a registry the test plays.

Code under test calls other services through a directory (``get_service(name).method(...)``,
``directory.call``, ``send``, ``push``, ``subscribe``) and follows the registry through its
``view``. :class:`FakeDirectory` has the same surface with no socket: every call is
recorded (:attr:`FakeDirectory.calls`), and what a service answers is either scripted
(:meth:`FakeDirectory.reply`, :meth:`FakeDirectory.fail`) or a real handler's answer
(:meth:`FakeDirectory.serve`); instances come and go when the test says so
(:meth:`FakeDirectory.register`, :meth:`FakeDirectory.deregister`), and listeners of
``view`` are told as a worker's would be. Time is a ``task.Clock``: a call nobody answers
fails with ``DeadlineExceeded`` once its timeout has passed on it.

Example::

    directory = FakeDirectory()
    directory.reply("sso", "login", {"user_id": "u1"})
    game = handler_factory(Game, directory=directory)
    result_of(call(game, "enter", user="harry"))
    assert directory.calls_to("sso", "login")[0].kwargs == {"user": "harry", ...}
"""

from __future__ import annotations

import itertools
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from twisted.internet import defer, task
from twisted.python.failure import Failure

from mmo.errors import BadRequest, DeadlineExceeded, NoLiveInstance, from_wire
from mmo.logic.calls import Done
from mmo.logic.client import Directory
from mmo.logic.handler import Origin, ServiceHandler, Session
from mmo.logic.server import error_fields
from mmo.registry import Change, Instance, Listener, RegistryView, make_instance
from mmo.testing.fakes import call as dispatch
from mmo.testing.sockets import FakeZmqContext
from mmo.types import Clock
from mmo.wire import WireError, decode_value, encode_value

__all__ = [
    "FakeCall",
    "FakeDirectory",
    "FakeLink",
    "FakeRegistration",
    "FakeRegistryView",
    "FakeSend",
    "FakeSubscription",
]

_ports = itertools.count(40000)


@dataclass
class FakeCall:
    """One request-reply call a :class:`FakeDirectory` received.

    Attributes:
        service: the service called.
        method: the method called.
        kwargs: its arguments (decoded from ``raw_body`` for a forwarded call; None
            when that body is not a map of arguments).
        timeout: its deadline, in seconds.
        session: the client session it was made for, if any.
        instance: the one instance it was addressed to, if any.
        raw_body: the body as the caller forwarded it (brokers), or None.
        client_seq: the client packet's seq (brokers), or None.
        origin: on whose behalf (``Origin.CLIENT``, ``Origin.LOGIN``), or None: a member's.
        peer: the player's address, with ``origin``.
    """

    service: str
    method: str
    kwargs: dict[str, Any] | None
    timeout: float
    session: Session | None = None
    instance: str | None = None
    raw_body: bytes | None = None
    client_seq: int | None = None
    origin: int | None = None
    peer: str | None = None


@dataclass
class FakeSend:
    """One one-way request (``send``, ``send_all``) or push a :class:`FakeDirectory` took.

    Attributes:
        service: the service it went to.
        method: the method.
        body: the encoded body (``send``), or None for a push.
        kwargs: the arguments of a push, or None.
        instance: the instance it went to (None for a push: any one takes it).
        header: the extra header fields given to ``send`` (session, targets, channel...).
    """

    service: str
    method: str
    body: bytes | None = None
    kwargs: dict[str, Any] | None = None
    instance: str | None = None
    header: dict[str, Any] = field(default_factory=dict)


@dataclass
class FakeLink:
    """The fake directory's link to one registered instance (what ``links()`` reports).

    Attributes:
        instance: the instance's registry record.
        up: whether the link is connected (set it to play a dropped connection).
        draining: whether the instance said goodbye and takes no new calls.
    """

    instance: Instance
    up: bool = True
    draining: bool = False


class FakeSubscription:
    """One ``subscribe`` on a :class:`FakeDirectory`; :meth:`unsubscribe` ends it."""

    def __init__(
        self,
        directory: FakeDirectory,
        service: str,
        topic: str,
        callback: Callable[[str, Any], Any],
    ) -> None:
        self.directory = directory
        self.service = service
        self.topic = topic
        self.callback = callback

    def unsubscribe(self) -> None:
        """Stop delivering events to the callback."""
        if self in self.directory.subscriptions:
            self.directory.subscriptions.remove(self)


class FakeRegistryView(RegistryView):
    """The ``view`` of a :class:`FakeDirectory`: a real :class:`~mmo.registry.RegistryView`
    that is never started (it watches no yellow); the test feeds it changes through the
    directory's ``register``/``deregister``, and its listeners, ``get``, ``instances``,
    ``synced``, ``warm`` and ``wait_for`` behave as a worker's view does (a listener's
    exception is logged, as there).

    Args:
        clock: the clock its waits and ``warm`` are measured on.
        yellows: the yellow addresses it names.
        synced: whether it starts as having read the registry (any change makes it so).
    """

    def __init__(self, clock: Clock, yellows: Iterable[str], *, synced: bool = True) -> None:
        # Never started: the context only lends its clock.
        super().__init__(cast(Any, FakeZmqContext(clock)), yellows)
        self.synced = synced

    @property
    def listeners(self) -> list[Listener]:
        """The registered listeners, in order."""
        return list(self._listeners)

    def apply(self, change: int, instance: Instance, reason: str) -> None:
        """Record ``instance`` up or down and tell the listeners, as an UPDATE would."""
        self.synced = True
        self._apply(change, instance, reason)


class FakeRegistration:
    """Stands in for a role's :class:`~mmo.registry.Registration` (a broker's, a fight
    dispatcher's): it registers nowhere and records each metadata update (the load a
    broker or a dispatcher publishes), as ``(now, meta)``, and each record it is told to
    drop (:meth:`forget`)."""

    def __init__(self) -> None:
        self.updates: list[tuple[bool, dict[str, Any]]] = []
        self.forgotten: list[tuple[str, str]] = []

    def update_meta(self, now: bool = True, **meta: Any) -> None:
        """Record the update."""
        self.updates.append((now, meta))

    def forget(self, service: str, instance_id: str) -> None:
        """Record the ``(service, instance_id)`` the registry was told to drop."""
        self.forgotten.append((service, instance_id))


#: What a scripted service does with a call: its answer, a Deferred of it, or a raise.
Outcome = Callable[[FakeCall], Any]


@dataclass(frozen=True)
class _Script:
    outcome: Outcome
    # A failure after the call ran: what would have answered runs first.
    after_running: bool = False


class FakeDirectory:
    """Stands in for :class:`mmo.logic.client.Directory`, on a ``task.Clock``.

    A call reaches, in this order: a one-time script of its method, then of its
    service (``once=True``); a script of its method, then of its service; a served
    handler (:meth:`serve`; by ``instance`` if the call names one); an instance
    registered without either, which never answers (the call fails with
    ``DeadlineExceeded`` once its timeout has passed on the clock). A service with
    none of these fails the call with ``NoLiveInstance``, as in a cluster.

    Args:
        clock: the clock (default: a new ``task.Clock``), also ``clock`` here.
        synced: whether ``view`` starts as having read the registry (a registration
            makes it so).
        caller_id: how calls to served handlers name their caller.
        caller_role: the role those calls state.
        default_timeout: a call's deadline when none is given, in seconds.
        yellows: the addresses ``view.yellows`` shows.

    Attributes:
        calls: every request-reply call, in order.
        sent: every one-way request (``send``, ``send_all``), in order.
        pushed: every push, in order.
        asked: ``(name, pattern, timeout)`` of each ``get_service``.
        subscriptions: the live subscriptions.
        links_opened: the services whose links were asked for (``links``).
        on_one_way_error: set by code under test, as on a Directory (brokers do).
    """

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        synced: bool = True,
        caller_id: str = "test",
        caller_role: str = "worker",
        default_timeout: float = 5.0,
        yellows: Iterable[str] = ("tcp://127.0.0.1:5555",),
    ) -> None:
        self.clock: Clock = clock if clock is not None else task.Clock()
        self.view = FakeRegistryView(self.clock, yellows, synced=synced)
        self.caller_id = caller_id
        self.caller_role = caller_role
        self.default_timeout = default_timeout
        self.on_one_way_error: Callable[[Any], None] | None = None
        self.calls: list[FakeCall] = []
        self.sent: list[FakeSend] = []
        self.pushed: list[FakeSend] = []
        self.asked: list[tuple[str, str, float | None]] = []
        self.subscriptions: list[FakeSubscription] = []
        self.links_opened: set[str] = set()
        self._links: dict[str, dict[str, FakeLink]] = {}
        self._once: dict[tuple[str, str | None], deque[_Script]] = defaultdict(deque)
        self._always: dict[tuple[str, str | None], _Script] = {}
        self._served: dict[str, dict[str, ServiceHandler]] = {}

    # -- what the test does ---------------------------------------------------

    def reply(
        self, service: str, method: str | None, result: Any = None, *, once: bool = False
    ) -> None:
        """Answer calls of ``service.method`` (of any method of ``service`` if ``method``
        is None) with ``result``; a callable ``result`` is called with the
        :class:`FakeCall` and returns the answer, a Deferred of it, or raises.

        With ``once``, only the next such call is answered so; later ones get what they
        got before. A forwarded call (``raw_body``) gets a non-bytes answer encoded.
        """
        outcome = cast(Outcome, result) if callable(result) else (lambda _: result)
        self._script(service, method, _Script(outcome), once)

    def fail(
        self,
        service: str,
        method: str | None,
        error: BaseException,
        *,
        once: bool = False,
        after_running: bool = False,
    ) -> None:
        """Fail calls of ``service.method`` (any method if None) with ``error``.

        With ``after_running``, the call first reaches what would have answered it (a
        served handler runs it) and then fails: the answer was lost on the way back.
        """

        def raise_error(_: FakeCall) -> Any:
            raise error

        self._script(service, method, _Script(raise_error, after_running), once)

    def serve(self, handler: ServiceHandler, *, meta: Mapping[str, Any] | None = None) -> FakeLink:
        """Answer calls and pushes to ``handler.service_name`` with ``handler`` (through its
        dispatch table, errors as a caller sees them) and register its instance.

        Several handlers may serve one service; a call naming an ``instance`` goes to
        that one, others to the first served.
        """
        self._served.setdefault(handler.service_name, {})[handler.instance_id] = handler
        return self.register(
            handler.service_name,
            handler.instance_id,
            meta={**type(handler).registry_meta(), **(meta or {})},
        )

    def register(
        self,
        service: str,
        instance_id: str,
        *,
        endpoints: Mapping[str, str] | None = None,
        meta: Mapping[str, Any] | None = None,
        up: bool = True,
        reason: str = "registered",
    ) -> FakeLink:
        """Register an instance (again), as a yellow's UPDATE would, and tell the listeners.

        Without ``endpoints`` it gets a fresh ``rep`` address, as a restarted process
        would. Returns this process's new link to it (``up`` as given).
        """
        address = f"tcp://127.0.0.1:{next(_ports)}"
        instance = make_instance(
            service, instance_id, dict(endpoints or {"rep": address}), dict(meta or {})
        )
        link = self._links.setdefault(service, {})[instance_id] = FakeLink(instance, up)
        self.view.apply(Change.UP, instance, reason)
        return link

    def deregister(self, service: str, instance_id: str, reason: str = "deregistered") -> None:
        """Remove an instance (``reason``: deregistered, expired...) and tell the listeners."""
        link = self._links.get(service, {}).pop(instance_id)
        self._served.get(service, {}).pop(instance_id, None)
        self.view.apply(Change.DOWN, link.instance, reason)

    def link(self, service: str, instance_id: str) -> FakeLink:
        """This process's link to a registered instance (KeyError if there is none)."""
        return self._links[service][instance_id]

    def publish(self, service: str, topic: str, payload: Any) -> int:
        """Deliver an event of ``service`` to the subscriptions whose topic is a prefix of
        ``topic``; return how many got it (a callback's exception propagates)."""
        delivered = 0
        for subscription in list(self.subscriptions):
            if subscription.service == service and topic.startswith(subscription.topic):
                subscription.callback(topic, payload)
                delivered += 1
        return delivered

    def calls_to(self, service: str, method: str | None = None) -> list[FakeCall]:
        """The calls of ``service.method`` (of any method if None), in order."""
        return [c for c in self.calls if c.service == service and method in (None, c.method)]

    # -- Directory's surface --------------------------------------------------

    def get_service(self, name: str, pattern: str = "REP", timeout: float | None = None) -> Any:
        """A proxy to service ``name``: the Directory's own (its proxies call back here)."""
        self.asked.append((name, pattern, timeout))
        return Directory.get_service(cast(Directory, self), name, pattern, timeout)

    def call(
        self,
        service: str,
        method: str,
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        session: Session | None = None,
        instance: str | None = None,
        raw_body: bytes | None = None,
        client_seq: int | None = None,
        origin: int | None = None,
        peer: str | None = None,
        trace: Any = None,
    ) -> defer.Deferred[Any]:
        """Record the call and answer it as scripted (see the class); it fails with
        ``BadRequest`` if its arguments cannot travel, as on a Directory."""
        timeout = self.default_timeout if timeout is None else timeout
        if raw_body is None:
            try:
                encode_value(kwargs or {})
            except WireError as e:
                return defer.fail(BadRequest(f"{service}.{method}: {e}"))
            arguments: dict[str, Any] | None = dict(kwargs or {})
        else:
            arguments = _arguments(raw_body)
        record = FakeCall(
            service,
            method,
            arguments,
            timeout,
            session,
            instance,
            raw_body,
            client_seq,
            origin,
            peer,
        )
        self.calls.append(record)
        d = defer.maybeDeferred(self._answer, record, self._candidates(record))
        if raw_body is not None:
            d.addCallback(lambda value: value if isinstance(value, bytes) else encode_value(value))

        def timed_out(_: Any, _timeout: float) -> Any:
            raise DeadlineExceeded(f"{service}.{method} got no answer within {timeout:g}s")

        return d.addTimeout(timeout, self.clock, onTimeoutCancel=timed_out)  # type: ignore[arg-type]

    def forward(self, service: str, method: str, body: bytes, done: Done, **call: Any) -> None:
        """:meth:`call` with ``raw_body=body``, its outcome handed to ``done``."""
        d = self.call(service, method, raw_body=body, **call)
        d.addCallbacks(lambda reply: done(reply, None), lambda failure: done(None, failure.value))

    def send(
        self,
        service: str,
        method: str,
        body: bytes,
        *,
        instance: str | None = None,
        prefer: str | None = None,
        **header: Any,
    ) -> str | None:
        """Record a one-way request to ``instance`` (or ``prefer`` while its link is up,
        else a live one of ``service``, a connected one first); return the instance it
        went to, or None when none is registered."""
        links = self._live(service)
        target = instance if instance in links else None
        if prefer in links and links[prefer].up:
            target = prefer
        elif instance is None and links:
            # Connected links first, as a Directory picks.
            target = min(links, key=lambda iid: not links[iid].up)
        if target is None:
            return None
        self.sent.append(FakeSend(service, method, body, instance=target, header=dict(header)))
        return target

    def send_all(self, service: str, method: str, body: bytes, **header: Any) -> int:
        """Record a one-way request to every live instance of ``service``; return how many."""
        targets = list(self._live(service))
        for target in targets:
            self.sent.append(FakeSend(service, method, body, instance=target, header=dict(header)))
        return len(targets)

    def push(self, service: str, method: str, kwargs: dict[str, Any] | None = None) -> None:
        """Record a push (a served handler runs it; its outcome goes nowhere).

        Raises:
            NoLiveInstance: nothing registered, served or scripted takes ``service``.
            BadRequest: the arguments cannot be encoded.
        """
        if not (self._live(service) or self._scripted(service)):
            raise NoLiveInstance(f"no live instance of service {service!r}")
        try:
            encode_value(kwargs or {})
        except WireError as e:
            raise BadRequest(f"{service}.{method}: {e}") from e
        self.pushed.append(FakeSend(service, method, kwargs=dict(kwargs or {})))
        handler = next(iter(self._served.get(service, {}).values()), None)
        if handler is not None:
            defer.maybeDeferred(
                dispatch,
                handler,
                method,
                kwargs,
                caller=self.caller_id,
                caller_role=self.caller_role,
            ).addErrback(lambda _: None)

    def subscribe(
        self, service: str, topic: str, callback: Callable[[str, Any], Any]
    ) -> FakeSubscription:
        """Deliver the events of ``service`` whose topic starts with ``topic`` (see
        :meth:`publish`) to ``callback(topic, payload)``."""
        subscription = FakeSubscription(self, service, topic, callback)
        self.subscriptions.append(subscription)
        return subscription

    def links(self, service: str) -> dict[str, bool]:
        """Instance id -> whether the link to it is up, for every registered instance of
        ``service`` that is not draining."""
        self.links_opened.add(service)
        return {iid: link.up for iid, link in self._live(service).items()}

    # -- internals ------------------------------------------------------------

    def _script(self, service: str, method: str | None, script: _Script, once: bool) -> None:
        if once:
            self._once[(service, method)].append(script)
        else:
            self._always[(service, method)] = script

    def _scripted(self, service: str) -> bool:
        return any(key[0] == service for key in (*self._always, *self._once))

    def _live(self, service: str) -> dict[str, FakeLink]:
        return {
            iid: link for iid, link in self._links.get(service, {}).items() if not link.draining
        }

    def _candidates(self, record: FakeCall) -> list[Outcome | _Script]:
        """What may answer ``record``, first first (one-time scripts are taken now)."""
        keys = ((record.service, record.method), (record.service, None))
        found: list[Outcome | _Script] = []
        for key in keys:
            queue = self._once.get(key)
            if queue:
                found.append(queue.popleft())
        found += [self._always[key] for key in keys if key in self._always]
        found.append(self._serve_call)
        return found

    def _answer(self, record: FakeCall, candidates: list[Outcome | _Script]) -> Any:
        first, rest = candidates[0], candidates[1:]
        if not isinstance(first, _Script):
            return first(record)
        if not first.after_running:
            return first.outcome(record)
        ran = defer.maybeDeferred(self._answer, record, rest)
        return ran.addBoth(lambda _: first.outcome(record))

    def _serve_call(self, record: FakeCall) -> Any:
        handlers = self._served.get(record.service, {})
        handler = handlers.get(record.instance) if record.instance else None
        if handler is None and record.instance is None and handlers:
            handler = next(iter(handlers.values()))
        if handler is not None:
            return self._run(handler, record)
        links = self._live(record.service)
        if record.instance in links or (record.instance is None and links):
            return defer.Deferred()  # registered, but nothing answers: the deadline will
        which = f"instance {record.instance!r}" if record.instance else "live instance"
        raise NoLiveInstance(f"no {which} of service {record.service!r}")

    def _run(self, handler: ServiceHandler, record: FakeCall) -> defer.Deferred[Any]:
        if record.kwargs is None:
            return defer.fail(BadRequest("the body of a call must be a map of keyword arguments"))
        d = defer.maybeDeferred(
            dispatch,
            handler,
            record.method,
            record.kwargs,
            session=record.session,
            origin=record.origin or Origin.MEMBER,
            caller=self.caller_id,
            caller_role=self.caller_role,
            peer=record.peer,
            timeout=record.timeout,
        )
        return d.addErrback(_as_seen_by_the_caller)


def _arguments(raw_body: bytes) -> dict[str, Any] | None:
    try:
        value = decode_value(raw_body) if raw_body else {}
    except WireError:
        return None
    return value if isinstance(value, dict) else None


def _as_seen_by_the_caller(failure: Failure) -> Any:
    """A handler's exception as the calling process gets it across the wire."""
    error = failure.value
    assert error is not None
    fields = error_fields(error)
    raise from_wire(fields["error_code"], fields["error_type"], fields["error_message"])
