"""Log shipping: every log event of a process, sent to the log collector (``mmo-logs``).

A :class:`LogShipper` observes ``twisted.logger``'s global publisher. Its observer does
the least it can in the emitter's call: it turns the event into its flat record
(:func:`mmo.telemetry.logs.record`, there and then, so that the record has the trace id
of the request being served) and appends it to a bounded queue. It never blocks and
never raises. When the queue is full the oldest record is dropped and counted
(``mmo_log_events_dropped_total``): a process whose collector is away or slow keeps
serving with bounded memory. An event logged in another thread is handed to the reactor
thread (``callFromThread``), which alone touches the queue.

A flush, soon after (on the next turn of the reactor after a quiet spell, then at most
every :attr:`LogShipper.flush_delay` seconds while events keep coming, so that they
travel in batches), sends the queue as one-way requests ``logs.ship(events=[json, ...])``
of up to :attr:`LogShipper.batch_events` records or about :attr:`LogShipper.batch_bytes`
bytes each, on the process's own links to the collectors (``Directory.send``). It
sends to a collector whose link is connected, the same one while it stays so (the
instances of the cluster spread over the collectors by a hash of their names); when
there is none, the records stay queued (bounded) and it tries again every
:attr:`LogShipper.retry_delay` seconds.

An ``error`` or ``critical`` record is not left for the next turn: once a collector is
connected, the queue is sent in the emitter's call, that record last. A worker that logs
a failure and then answers has handed the record to ZeroMQ before its answer (an answer
first sends what the process's links batched: :func:`mmo.logic.links.flush_batches`), so
it is shipped even if the process is killed the moment the answer is out. This is the one
hand-over done in the observer: non-blocking (the links have no high-water mark), on a
link already open (the directory is only read, nothing is opened from the emitter's
call), and anything that goes wrong leaves the records queued. Other events go at most a
reactor turn (or a flush delay) later: a process killed outright loses those it had not
flushed yet.

Delivery is at most once: a batch is gone from the queue once handed to ZeroMQ, and lost
if the collector dies before reading it (its link has no acknowledgements).

No loop: the shipper's own events (namespace :data:`NAMESPACE`, a rare warning) stay in
the process's own log, and so does anything logged while a flush runs (the send path's
warnings); a flush runs outside any trace, so that the collector logs no span for it.
"""

from __future__ import annotations

import json
import threading
import zlib
from collections import deque
from collections.abc import Iterator
from itertools import islice
from typing import Any

from twisted.application.service import Service
from twisted.logger import (
    ILogObserver,
    Logger,
    LogPublisher,
    PredicateResult,
    globalLogPublisher,
)
from typing_extensions import override
from zope.interface import provider

from mmo.telemetry.logs import LEVEL, record
from mmo.telemetry.metrics import Metric, counter, gauge
from mmo.telemetry.trace import CURRENT
from mmo.types import DelayedCall
from mmo.wire import encode_value

__all__ = ["COLLECTOR_SERVICE", "NAMESPACE", "URGENT", "LogShipper"]

#: The log collector's service name, and its method taking shipped events.
COLLECTOR_SERVICE = "logs"
SHIP_METHOD = "ship"
#: The namespace of the shipper's own log events (never shipped).
NAMESPACE = "mmo.ops.shipper"
#: Levels of the records sent at once, in the emitter's call (see the module's doc).
URGENT = frozenset({"error", "critical"})


class LogShipper(Service):
    """Ships this process's log events to the log collector (see the module's doc).

    Args:
        directory: the process's :class:`~mmo.logic.client.Directory` (what is used of it:
            ``links(service)``, ``send(service, method, body, instance=...)``, ``clock``
            and ``caller_id``).
        max_queue: records held at most while no collector takes them (the oldest are
            dropped first, and counted).
        reactor: the clock flushes are scheduled on (default: the directory's).
        publisher: the log publisher observed (default: ``twisted.logger``'s global one).

    Attributes:
        queue: the records waiting to be shipped, oldest first.
        shipped: records handed to a collector.
        dropped: records dropped because the queue was full.
        batches: messages sent.
        target: the collector instance sent to last, if any.
    """

    #: Seconds between two flushes while events keep coming (they travel in batches).
    flush_delay = 0.05
    #: Seconds between two tries when no collector is reachable.
    retry_delay = 1.0
    #: The most records, and about the most bytes of JSON, in one message.
    batch_events = 500
    batch_bytes = 256 * 1024
    #: The most messages one flush sends (a backlog goes out over several turns).
    batches_per_flush = 8
    #: The most messages the last flush sends, when the service stops.
    final_batches = 64
    #: Seconds between two warnings that the collector is unreachable and events drop.
    warn_interval = 60.0

    def __init__(
        self,
        directory: Any,
        max_queue: int,
        *,
        reactor: Any = None,
        publisher: LogPublisher | None = None,
    ) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self.directory = directory
        self.max_queue = max_queue
        self.reactor = reactor if reactor is not None else directory.clock
        self.publisher = publisher if publisher is not None else globalLogPublisher
        self.queue: deque[dict[str, Any]] = deque(maxlen=max_queue)
        self.shipped = 0
        self.dropped = 0
        self.batches = 0
        self.target: str | None = None
        self._observing = False
        self._flushing = False
        self._pending: DelayedCall | None = None
        self._last_flush = float("-inf")
        self._thread = threading.get_ident()
        self._warned_at = float("-inf")
        self._warned_dropped = 0

        @provider(ILogObserver)
        def observe(event: dict[str, Any]) -> None:
            self._observe(event)

        self.observer = observe
        self._log = Logger(namespace=NAMESPACE, observer=self.publisher)

    # -- service -------------------------------------------------------------

    @override
    def privilegedStartService(self) -> None:
        """Observe from the tree's first step, before any service starts (so that the
        other services' start-up events are shipped too)."""
        super().privilegedStartService()
        self._start_observing()

    @override
    def startService(self) -> None:
        """Observe (if not yet), and ship what is queued."""
        super().startService()
        self._start_observing()
        if self.queue:
            self._schedule()

    @override
    def stopService(self) -> None:
        """Stop observing; send what is queued (if a collector is reachable)."""
        super().stopService()
        if self._observing:
            self.publisher.removeObserver(self.observer)
            self._observing = False
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
        try:
            self._flush(final=True)
        except Exception:  # the stop goes on; what is queued stays unsent
            self._log.failure("the last log shipment failed")

    def _start_observing(self) -> None:
        if not self._observing:
            self._thread = threading.get_ident()
            self.publisher.addObserver(self.observer)
            self._observing = True

    # -- the observer (in the emitter's call: cheap, never raises) ---------------

    def _observe(self, event: dict[str, Any]) -> None:
        if event.get("log_namespace") == NAMESPACE or LEVEL(event) is PredicateResult.no:
            return
        in_reactor = threading.get_ident() == self._thread
        if self._flushing and in_reactor:
            return
        try:
            rec = record(event)
        except Exception:  # a record that cannot be made is not shipped; never raise here
            return
        if in_reactor:
            self._append(rec)
            return
        # Another thread logged: the queue is the reactor's, so the reactor appends it.
        call_from_thread = getattr(self.reactor, "callFromThread", None)
        if call_from_thread is not None:
            call_from_thread(self._append, rec)

    def _append(self, rec: dict[str, Any]) -> None:
        queue = self.queue
        if len(queue) == self.max_queue:
            self.dropped += 1
        queue.append(rec)
        if rec.get("level") in URGENT and self.target is not None and self.running:
            self._flush_at_once()
        elif self._pending is None:
            self._schedule()

    def _flush_at_once(self) -> None:
        """Send the queue now, the urgent record last: a process that dies right after
        logging an error has shipped it.

        A non-blocking hand-over to ZeroMQ on a link already open to a connected collector
        (``target``: the directory's state is only read), in the emitter's call. Whatever
        goes wrong leaves the records queued for the next flush; nothing is raised.
        """
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
        try:
            self._flush()
        except Exception:
            self.target = None
            self._pending = None
            self._schedule(self.retry_delay)

    def _schedule(self, delay: float | None = None) -> None:
        if self._pending is not None or not self.running:
            return
        if delay is None:
            delay = max(0.0, self._last_flush + self.flush_delay - self.reactor.seconds())
        self._pending = self.reactor.callLater(delay, self._flush)

    # -- sending ---------------------------------------------------------------

    def _flush(self, final: bool = False) -> None:
        """Send what is queued, in batches, to a reachable collector."""
        self._pending = None
        self._last_flush = self.reactor.seconds()
        if not self.queue:
            return
        # Nothing logged while sending is shipped (it is the send path's own), and the
        # send carries no trace (the collector would log a span for it).
        self._flushing = True
        token = CURRENT.set(None)
        try:
            sent_all = self._send_batches(self.final_batches if final else self.batches_per_flush)
        finally:
            CURRENT.reset(token)
            self._flushing = False
        if final:
            return
        if not sent_all:
            self._unreachable()
            self._schedule(self.retry_delay)
        elif self.queue:
            self._schedule(self.flush_delay)

    def _send_batches(self, most: int) -> bool:
        """Send batches (at most ``most``); False if no collector took one."""
        sent = 0
        while self.queue and sent < most:
            target = self._collector()
            if target is None:
                return False
            lines, size = self._batch()
            body = encode_value({"events": lines})
            went = self.directory.send(COLLECTOR_SERVICE, SHIP_METHOD, body, instance=target)
            if went is None:
                self.target = None
                return False
            for _ in range(size):
                self.queue.popleft()
            self.shipped += size
            self.batches += 1
            sent += 1
        return True

    def _batch(self) -> tuple[list[str], int]:
        """The oldest records as JSON lines, up to the batch limits (at least one)."""
        lines: list[str] = []
        total = 0
        for rec in islice(self.queue, self.batch_events):
            line = json.dumps(rec, default=repr, ensure_ascii=False, separators=(",", ":"))
            if lines and total + len(line) > self.batch_bytes:
                break
            lines.append(line)
            total += len(line)
        return lines, len(lines)

    def _collector(self) -> str | None:
        """A collector whose link is connected: the one sent to last while it stays so,
        else the one this process's name hashes to among them."""
        links = self.directory.links(COLLECTOR_SERVICE)
        if self.target is not None and links.get(self.target):
            return self.target
        up = [iid for iid, connected in links.items() if connected]
        if not up:
            self.target = None
            return None
        me = str(getattr(self.directory, "caller_id", ""))
        self.target = max(up, key=lambda iid: zlib.crc32(f"{me}\0{iid}".encode()))
        return self.target

    def _unreachable(self) -> None:
        """Say (rarely, in this process's own log only) that events are held or dropped."""
        now = self.reactor.seconds()
        if self.dropped == self._warned_dropped or now - self._warned_at < self.warn_interval:
            return
        self._warned_at, self._warned_dropped = now, self.dropped
        self._log.warn(
            "no log collector reachable: {queued} events held, {dropped} dropped so far "
            "(the oldest go first)",
            queued=len(self.queue),
            dropped=self.dropped,
        )

    # -- metrics ---------------------------------------------------------------

    def metrics(self) -> Iterator[Metric]:
        """Records shipped and dropped, and the queue (a metrics source)."""
        yield counter(
            "mmo_log_events_shipped",
            "Log events sent to the log collector.",
            values=self.shipped,
        )
        yield counter(
            "mmo_log_events_dropped",
            "Log events dropped unshipped: the queue was full (no collector reachable, "
            "or too slow).",
            values=self.dropped,
        )
        yield gauge(
            "mmo_log_queue_events",
            "Log events waiting to be shipped to the log collector.",
            values=len(self.queue),
        )
        yield gauge(
            "mmo_log_queue_capacity",
            "The most log events held for the log collector (--log-queue).",
            values=self.max_queue,
        )
