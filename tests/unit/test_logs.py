"""Distributed logging without sockets: the shipper (on a fake directory and a Clock) and
the collector's store, queries and file rotation."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from twisted.internet import task
from twisted.logger import Logger, LogLevel, LogPublisher

from mmo.errors import BadRequest, UnknownMethod
from mmo.logic.client import Directory
from mmo.logs.collector import LogCollector, epoch_of, level_rank, since_time
from mmo.logs.config import LogsConfig
from mmo.ops.shipper import NAMESPACE, LogShipper
from mmo.registry import make_instance
from mmo.telemetry.logs import iso_time
from mmo.telemetry.trace import CURRENT, Trace
from mmo.testing import FakeDirectory, as_player, call, handler_factory, result_of
from mmo.testing.sockets import FakeZmqContext
from mmo.wire import decode, decode_value, encode
from mmo.wire.gen.mmo.ttypes import RegistryMessage, RegistryOp, Session


def shipped(directory: FakeDirectory) -> list[list[dict[str, Any]]]:
    """The batches the shipper sent, each as the records it carried."""
    batches = []
    for send in directory.sent:
        assert (send.service, send.method) == ("logs", "ship")
        assert send.body is not None
        body = decode_value(send.body)
        assert set(body) == {"events"}
        batches.append([json.loads(line) for line in body["events"]])
    return batches


class Rig:
    """A started shipper on a FakeDirectory and a Clock, and a logger it observes."""

    def __init__(self, max_queue: int = 100, publisher: LogPublisher | None = None) -> None:
        self.clock = task.Clock()
        self.directory = FakeDirectory(self.clock, caller_id="echo-a")
        self.publisher = publisher if publisher is not None else LogPublisher()
        self.shipper = LogShipper(self.directory, max_queue, publisher=self.publisher)
        self.log = Logger(namespace="game.test", observer=self.publisher)

    def start(self) -> Rig:
        self.shipper.privilegedStartService()
        self.shipper.startService()
        return self

    def collector(self, iid: str = "logs-1", up: bool = True) -> None:
        self.directory.register("logs", iid, up=up)

    def messages(self) -> list[str]:
        return [r["message"] for batch in shipped(self.directory) for r in batch]

    def metric(self, name: str) -> float:
        for family in self.shipper.metrics():
            for sample in family.samples:
                if sample.name == name:
                    return float(sample.value)
        raise KeyError(name)


@pytest.fixture
def rig() -> Iterator[Rig]:
    made = Rig().start()
    yield made
    if made.shipper.running:
        made.shipper.stopService()


# -- the shipper -------------------------------------------------------------------------


def test_records_are_shipped_soon_as_json_lines_with_the_trace_id(rig: Rig) -> None:
    """An event becomes its flat record at once (with the trace of the request being
    served), and reaches a connected collector on the next turn of the reactor."""
    rig.collector()
    token = CURRENT.set(Trace("t" * 32, traced=True))
    try:
        rig.log.warn("player {name} moved", name="harry")
    finally:
        CURRENT.reset(token)
    assert rig.directory.sent == []  # nothing sent from inside the emitter's call
    rig.clock.advance(0)
    ((rec,),) = shipped(rig.directory)
    assert rec["message"] == "player harry moved" and rec["name"] == "harry"
    assert (rec["level"], rec["namespace"], rec["trace_id"]) == ("warn", "game.test", "t" * 32)
    assert rig.directory.sent[0].instance == "logs-1"
    assert rig.metric("mmo_log_events_shipped_total") == 1
    assert rig.metric("mmo_log_queue_events") == 0


def test_events_that_keep_coming_travel_in_batches_at_most_every_flush_delay(rig: Rig) -> None:
    """After the first flush, events logged within the flush delay wait for the next one
    and go together."""
    rig.collector()
    rig.log.info("first")
    rig.clock.advance(0)
    for n in range(5):
        rig.log.info("more {n}", n=n)
        rig.clock.advance(0.001)
    assert len(rig.directory.sent) == 1
    rig.clock.advance(LogShipper.flush_delay)
    assert [len(b) for b in shipped(rig.directory)] == [1, 5]
    assert rig.messages() == ["first", *(f"more {n}" for n in range(5))]


def test_a_full_queue_drops_the_oldest_and_counts_them() -> None:
    """With no collector, the queue holds the latest max_queue records; the dropped ones
    are counted, and the gauge shows the queue at its bound."""
    rig = Rig(max_queue=3).start()
    for n in range(5):
        rig.log.info("event {n}", n=n)
    rig.clock.advance(5)
    assert [r["message"] for r in rig.shipper.queue] == ["event 2", "event 3", "event 4"]
    assert rig.shipper.dropped == 2
    assert rig.metric("mmo_log_events_dropped_total") == 2
    assert rig.metric("mmo_log_queue_events") == 3
    assert rig.metric("mmo_log_queue_capacity") == 3
    assert rig.directory.sent == []


def test_batches_are_bounded_by_count_and_by_bytes() -> None:
    """A backlog goes out in messages of at most batch_events records, and of about
    batch_bytes (a record bigger than that goes alone), oldest first."""
    rig = Rig(max_queue=5000).start()
    for n in range(1200):
        rig.log.info("n={n}", n=n)
    rig.collector()
    rig.clock.advance(1)
    assert [len(b) for b in shipped(rig.directory)] == [500, 500, 200]
    assert rig.messages() == [f"n={n}" for n in range(1200)]

    rig.directory.sent.clear()
    rig.directory.link("logs", "logs-1").up = False
    for n in range(4):
        rig.log.info("{blob}", blob=str(n) * 400)
    rig.log.info("{blob}", blob="x" * 9000)
    one = len(json.dumps(rig.shipper.queue[0]))
    rig.shipper.batch_bytes = int(one * 2.5)
    rig.directory.link("logs", "logs-1").up = True
    rig.clock.advance(1)
    sizes = [len(b) for b in shipped(rig.directory)]
    assert sizes == [2, 2, 1] and len(rig.messages()) == 5
    for send in rig.directory.sent[:2]:
        assert send.body is not None and len(send.body) < one * 2.5 + 100


def test_a_backlog_goes_out_over_several_turns() -> None:
    """One flush sends at most batches_per_flush messages; the rest follows after the flush
    delay, without waiting for a new event."""
    rig = Rig(max_queue=1000).start()
    rig.shipper.batch_events = 10
    for n in range(200):
        rig.log.info("n={n}", n=n)
    rig.collector()
    rig.clock.advance(1)
    assert len(rig.directory.sent) == LogShipper.batches_per_flush
    rig.clock.pump([LogShipper.flush_delay] * 3)
    assert len(rig.messages()) == 200


def test_without_a_connected_collector_records_wait_and_the_shipper_retries_every_second(
    rig: Rig,
) -> None:
    """No collector, or one whose link is not connected yet: nothing is sent and the
    records stay queued; once one is connected they go at the next retry."""
    rig.log.error("boom")
    rig.clock.advance(0)
    assert rig.directory.sent == [] and len(rig.shipper.queue) == 1
    rig.collector(up=False)
    rig.clock.advance(LogShipper.retry_delay)
    assert rig.directory.sent == [] and len(rig.shipper.queue) == 1
    rig.directory.link("logs", "logs-1").up = True
    rig.clock.advance(LogShipper.retry_delay)
    assert rig.messages() == ["boom"] and not rig.shipper.queue


def test_a_send_that_fails_keeps_the_records(rig: Rig) -> None:
    """When the directory cannot send (it returns None), the batch stays queued, in order,
    and goes at the next retry."""
    rig.collector()
    refused: list[str] = []
    real_send = rig.directory.send

    def send(*args: Any, **kwargs: Any) -> str | None:
        if not refused:
            refused.append("once")
            return None
        return real_send(*args, **kwargs)

    rig.directory.send = send  # type: ignore[method-assign]
    rig.log.info("a")
    rig.log.info("b")
    rig.clock.advance(0)
    assert [r["message"] for r in rig.shipper.queue] == ["a", "b"]
    rig.clock.advance(LogShipper.retry_delay)
    assert rig.messages() == ["a", "b"]


def test_the_shipper_sticks_to_one_collector_while_it_is_connected(rig: Rig) -> None:
    """Batches go to the same collector while its link is up, then to another one."""
    rig.collector("logs-1")
    rig.collector("logs-2")
    for n in range(3):
        rig.log.info("n={n}", n=n)
        rig.clock.advance(1)
    first = {s.instance for s in rig.directory.sent}
    assert len(first) == 1
    (chosen,) = first
    rig.directory.link("logs", chosen).up = False
    rig.log.info("after")
    rig.clock.advance(1)
    assert rig.directory.sent[-1].instance != chosen


def test_an_error_goes_at_once_once_a_collector_is_connected(rig: Rig) -> None:
    """An error (or critical) event is handed over in the emitter's call, after what was
    queued before it, once the shipper has a connected collector: a process killed right
    after logging it has shipped it. Before that, it waits like any event (nothing of the
    directory is touched from the emitter's call)."""
    rig.log.error("early failure")
    assert rig.directory.links_opened == set() and rig.directory.sent == []
    rig.collector()
    rig.clock.advance(0)
    assert rig.messages() == ["early failure"]

    rig.log.info("context")
    rig.log.error("failure: {why}", why="boom")
    assert [len(b) for b in shipped(rig.directory)] == [1, 2]
    assert rig.messages()[1:] == ["context", "failure: boom"]
    rig.log.critical("dying")
    assert rig.messages()[-1] == "dying" and not rig.shipper.queue


def test_an_urgent_send_that_raises_keeps_the_records_and_does_not_raise(rig: Rig) -> None:
    """Whatever goes wrong when an error is sent at once stays in the shipper: the emitter
    goes on, the records stay queued and go at the next retry."""
    rig.collector()
    rig.log.info("first")
    rig.clock.advance(0)
    real_send = rig.directory.send
    broken = [True]

    def send(*args: Any, **kwargs: Any) -> str | None:
        if broken[0]:
            raise RuntimeError("the directory is in a bad state")
        return real_send(*args, **kwargs)

    rig.directory.send = send  # type: ignore[method-assign]
    rig.log.error("failure")
    assert [r["message"] for r in rig.shipper.queue] == ["failure"]
    broken[0] = False
    rig.clock.advance(LogShipper.retry_delay)
    assert rig.messages() == ["first", "failure"]


def test_nothing_logged_while_sending_and_nothing_of_its_own_is_shipped(rig: Rig) -> None:
    """The send path's own log events (a warning of the directory) and the shipper's own
    warning stay out of the queue: no loop; the send carries no trace."""
    rig.collector()
    traces: list[Any] = []
    real_send = rig.directory.send

    def send(*args: Any, **kwargs: Any) -> str | None:
        traces.append(CURRENT.get())
        rig.log.warn("send path: something went wrong")
        return real_send(*args, **kwargs)

    rig.directory.send = send  # type: ignore[method-assign]
    token = CURRENT.set(Trace("abc", traced=True))
    try:
        rig.log.info("served")
        rig.shipper._flush()  # even when the flush runs inside a trace
    finally:
        CURRENT.reset(token)
    rig.clock.advance(5)
    assert rig.messages() == ["served"] and traces == [None]
    Logger(namespace=NAMESPACE, observer=rig.publisher).warn("the shipper's own")
    assert not rig.shipper.queue


def test_the_unreachable_warning_is_rare_and_not_queued() -> None:
    """With no collector and events dropping, the shipper warns at most once a minute, in
    the process's own log only."""
    rig = Rig(max_queue=2).start()
    seen: list[dict[str, Any]] = []
    rig.publisher.addObserver(seen.append)
    for _ in range(3):
        for n in range(5):
            rig.log.info("n={n}", n=n)
        rig.clock.advance(10)
    warnings = [e for e in seen if e.get("log_namespace") == NAMESPACE]
    assert len(warnings) == 1 and warnings[0]["log_level"] == LogLevel.warn
    assert [r["message"] for r in rig.shipper.queue] == ["n=3", "n=4"]


def test_a_real_directorys_send_warning_does_not_loop() -> None:
    """On a real Directory whose link refuses to send, the directory logs a warning from
    inside the flush (to twisted's global publisher): it is not shipped, the record stays
    queued and the shipper retries every second, without a storm of events."""
    ctx = FakeZmqContext()
    directory = Directory(ctx, ["tcp://yellow.test:7000"], caller_id="echo-a")  # type: ignore[arg-type]
    directory.startService()
    shipper = LogShipper(directory, 10)
    shipper.startService()
    try:
        (view_link,) = ctx.of_type(zmq.DEALER)
        watch = decode(RegistryMessage, view_link.sent[-1][-1])
        instance = make_instance("logs", "logs-1", {"rep": "tcp://logs.test:1"}, {})
        snapshot = RegistryMessage(
            op=RegistryOp.SNAPSHOT,
            request_id=watch.request_id,
            yellow_id="Y",
            seq=0,
            instances=[instance],
            uptime_ms=60_000,
        )
        view_link.deliver([encode(snapshot)])
        directory.links("logs")
        (link,) = [s for s in ctx.of_type(zmq.DEALER) if "tcp://logs.test:1" in s.connected]
        link.link_up()
        link.refuse = zmq.ZMQError(zmq.EHOSTUNREACH)
        Logger(namespace="game.test").info("hello")
        ctx.reactor.advance(0)
        assert [r["message"] for r in shipper.queue] == ["hello"]
        ctx.reactor.advance(LogShipper.retry_delay * 3)
        assert [r["message"] for r in shipper.queue] == ["hello"]
        link.refuse = None
        ctx.reactor.advance(LogShipper.retry_delay)
        assert not shipper.queue and len(link.sent) == 1
        assert [json.loads(x)["message"] for x in decode_value(link.sent[0][1])["events"]] == [
            "hello"
        ]
    finally:
        shipper.stopService()
        directory.stopService()


def test_stopping_stops_observing_and_sends_what_is_queued(rig: Rig) -> None:
    """A graceful stop sends the queue at once (if a collector is connected) and no
    event is taken after it."""
    rig.collector()
    rig.log.info("last words")
    rig.shipper.stopService()
    assert rig.messages() == ["last words"]
    rig.log.info("after the stop")
    rig.clock.advance(5)
    assert rig.messages() == ["last words"] and not rig.shipper.queue


def test_events_before_start_are_kept_from_the_privileged_start_on() -> None:
    """The observer is added at the tree's privileged start (before any service starts),
    so the other services' start-up events are shipped once the shipper runs."""
    rig = Rig()
    rig.log.info("before")
    rig.shipper.privilegedStartService()
    rig.log.info("starting up")
    rig.collector()
    rig.clock.advance(1)
    assert rig.directory.sent == []
    rig.shipper.startService()
    rig.clock.advance(0)
    assert rig.messages() == ["starting up"]
    rig.shipper.stopService()


def test_events_from_another_thread_are_queued_by_the_reactor() -> None:
    """An event logged in another thread is handed to the reactor thread
    (callFromThread), which queues it: the queue is only touched by the reactor."""

    class ThreadClock(task.Clock):
        def __init__(self) -> None:
            super().__init__()
            self.from_threads: list[Any] = []

        def callFromThread(self, f: Any, *args: Any) -> None:
            self.from_threads.append((f, args))

    rig = Rig()
    rig.shipper.reactor = rig.clock = ThreadClock()
    rig.directory.clock = rig.clock
    rig.start()
    thread = threading.Thread(target=lambda: rig.log.info("from a thread"))
    thread.start()
    thread.join()
    assert not rig.shipper.queue
    ((f, args),) = rig.clock.from_threads
    f(*args)
    assert [r["message"] for r in rig.shipper.queue] == ["from a thread"]
    rig.shipper.stopService()


def test_a_queue_bound_below_one_is_refused() -> None:
    """max_queue 0 means no shipping: the role does not make a shipper then."""
    with pytest.raises(ValueError):
        LogShipper(FakeDirectory(), 0)


# -- the collector -------------------------------------------------------------------------


def line(**fields: Any) -> str:
    base = {
        "time": iso_time(1_700_000_000.0),
        "level": "info",
        "role": "worker",
        "instance": "echo-a",
        "namespace": "game",
        "message": "m",
    }
    return json.dumps({**base, **fields})


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[LogCollector]:
    handler = handler_factory(LogCollector, settings={"dir": str(tmp_path / "logs")})
    handler.start()
    yield handler
    handler.stop()


def test_shipped_lines_are_numbered_kept_and_written(collector: LogCollector) -> None:
    """Each record gets the next seq, is kept in the ring and appended to mmo.log as one
    JSON line; a line that is not a JSON object is counted and skipped."""
    call(collector, "ship", events=[line(message="a"), "not json", "[1]", line(message="b")])
    call(collector, "ship", events=[line(message="c")])
    assert [(e["seq"], e["message"]) for e in collector.ring] == [(1, "a"), (2, "b"), (3, "c")]
    assert collector.bad == 2
    path = Path(collector.settings.dir) / "mmo.log"
    written = [json.loads(x) for x in path.read_text().splitlines()]
    assert [w["message"] for w in written] == ["a", "b", "c"]
    assert "seq" not in written[0] and written[0]["role"] == "worker"


def test_ship_is_not_for_players(collector: LogCollector) -> None:
    """A player's request to ship or query is refused as a method that does not exist."""
    player = Session(id="s1", user_id="u1", broker="broker-1")
    with pytest.raises(UnknownMethod):
        call(collector, "ship", events=[line()], **as_player(player))
    with pytest.raises(UnknownMethod):
        call(collector, "query", **as_player(player))
    assert not collector.ring


def test_queries_filter_by_role_instance_level_trace_and_time(collector: LogCollector) -> None:
    """role and instance match exactly, level means that level or more severe, trace the
    trace id, since a time (ISO or epoch seconds); events come oldest first."""
    t0 = 1_700_000_000.0
    call(
        collector,
        "ship",
        events=[
            line(time=iso_time(t0), level="debug", message="d"),
            line(time=iso_time(t0 + 1), level="warn", message="w", trace_id="T1"),
            line(time=iso_time(t0 + 2), level="error", message="e", role="broker"),
            line(time=iso_time(t0 + 3), level="critical", message="c", instance="echo-b"),
            line(time=iso_time(t0 + 4), level="info", message="i", trace_id="T1"),
        ],
    )

    def messages(**query: Any) -> list[str]:
        answer = result_of(call(collector, "query", **query))
        assert answer["last"] == 5
        return [e["message"] for e in answer["events"]]

    assert messages() == ["d", "w", "e", "c", "i"]
    assert messages(role="broker") == ["e"]
    assert messages(instance="echo-b") == ["c"]
    assert messages(level="warn") == ["w", "e", "c"]
    assert messages(level="error", role="worker") == ["c"]
    assert messages(trace="T1") == ["w", "i"]
    assert messages(since=t0 + 2) == ["e", "c", "i"]
    assert messages(since=iso_time(t0 + 3)) == ["c", "i"]
    assert messages(since="2023-11-14T22:13:22Z") == ["e", "c", "i"]
    assert messages(limit=2) == ["c", "i"]  # the latest
    with pytest.raises(BadRequest, match="unknown level"):
        call(collector, "query", level="loud")
    with pytest.raises(BadRequest, match="time"):
        call(collector, "query", since="yesterday")


def test_after_follows_new_events_in_pages(collector: LogCollector) -> None:
    """after=seq gives the matches that came since, oldest first, at most limit of them;
    last says where the next query goes on."""
    call(collector, "ship", events=[line(message=str(n)) for n in range(1, 8)])
    page = result_of(call(collector, "query", after=2, limit=3))
    assert [e["seq"] for e in page["events"]] == [3, 4, 5] and page["last"] == 5
    page = result_of(call(collector, "query", after=page["last"], limit=3))
    assert [e["seq"] for e in page["events"]] == [6, 7] and page["last"] == 7
    page = result_of(call(collector, "query", after=7))
    assert page == {"events": [], "last": 7}
    call(collector, "ship", events=[line(message="8", level="error")])
    page = result_of(call(collector, "query", after=7, level="error"))
    assert [e["message"] for e in page["events"]] == ["8"] and page["last"] == 8


def test_the_ring_keeps_the_latest_events(tmp_path: Path) -> None:
    """Past ring events, the oldest are forgotten by queries (the file keeps them all);
    after a seq older than the ring gives what it still has."""
    handler = handler_factory(LogCollector, settings={"dir": str(tmp_path), "ring": 3})
    handler.start()
    try:
        call(handler, "ship", events=[line(message=str(n)) for n in range(1, 6)])
        answer = result_of(call(handler, "query"))
        assert [e["seq"] for e in answer["events"]] == [3, 4, 5]
        assert [e["seq"] for e in result_of(call(handler, "query", after=1))["events"]] == [
            3,
            4,
            5,
        ]
        assert len((tmp_path / "mmo.log").read_text().splitlines()) == 5
    finally:
        handler.stop()


def test_the_file_rotates_by_size_and_keeps_that_many(tmp_path: Path) -> None:
    """mmo.log rotates to mmo.log.1 (the older ones move up) once rotate_bytes long, to
    within a line; past keep, the oldest rotated files are deleted."""
    handler = handler_factory(
        LogCollector, settings={"dir": str(tmp_path), "rotate_bytes": 2048, "keep": 2}
    )
    handler.start()
    try:
        for batch in range(10):
            call(
                handler,
                "ship",
                events=[line(message=f"{batch}-{n}-" + "x" * 100) for n in range(10)],
            )
    finally:
        handler.stop()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["mmo.log", "mmo.log.1", "mmo.log.2"]
    longest = len(line(message="9-9-" + "x" * 100)) + 1
    for name in names:
        text = (tmp_path / name).read_text()
        assert len(text.encode()) <= 2048 + longest
        assert all(json.loads(x)["role"] == "worker" for x in text.splitlines())
    newest = (tmp_path / "mmo.log").read_text().splitlines()
    assert json.loads(newest[-1])["message"].startswith("9-9-")
    older = (tmp_path / "mmo.log.1").read_text().splitlines()
    assert json.loads(older[-1])["message"] < json.loads(newest[0])["message"]


def test_a_record_without_a_time_gets_the_collectors(collector: LogCollector) -> None:
    """A record that lacks its time is stamped when taken (queries by time still see it)."""
    collector.clock.advance(1_700_000_100)  # type: ignore[attr-defined]
    call(collector, "ship", events=[json.dumps({"message": "no time", "level": "info"})])
    (event,) = collector.ring
    assert event["time"] == iso_time(1_700_000_100)
    written = (Path(collector.settings.dir) / "mmo.log").read_text()
    assert json.loads(written) == {"message": "no time", "level": "info", "time": event["time"]}


def test_shipper_to_collector_end_to_end(collector: LogCollector) -> None:
    """What the shipper sends, the collector takes as it was logged, and a query by trace
    finds it."""
    rig = Rig().start()
    rig.collector()
    token = CURRENT.set(Trace("f" * 32))
    try:
        rig.log.error("failed: {why}", why="disk full")
    finally:
        CURRENT.reset(token)
    rig.clock.advance(0)
    for send in rig.directory.sent:
        assert send.body is not None
        call(collector, "ship", **decode_value(send.body))
    (event,) = result_of(call(collector, "query", trace="f" * 32))["events"]
    assert (event["message"], event["level"], event["why"]) == (
        "failed: disk full",
        "error",
        "disk full",
    )
    rig.shipper.stopService()


def test_levels_and_times_helpers() -> None:
    """Levels rank debug < info < warn (warning) < error < critical; ISO times without a
    zone are UTC; since_time normalises both forms to the records' own."""
    assert [level_rank(x) for x in ("debug", "INFO", "warning", "warn", "error", "critical")] == [
        0,
        1,
        2,
        2,
        3,
        4,
    ]
    assert epoch_of("2023-11-14T22:13:20") == epoch_of("2023-11-14T22:13:20Z") == 1_700_000_000
    assert since_time(1_700_000_000) == since_time("2023-11-14T22:13:20+00:00")
    assert since_time("1700000000.5") == iso_time(1_700_000_000.5)


def test_the_roles_config_checks_its_values() -> None:
    """Bad ring, rotation or keep values are config errors naming the key."""
    from mmo.config import ConfigError, build

    good = build(LogsConfig, {"yellow": "tcp://127.0.0.1:5555", "rotate-bytes": "4096"})
    assert good.settings().rotate_bytes == 4096 and good.dir == "var/logs"
    for key, value in (("ring", "0"), ("rotate-bytes", "10"), ("keep", "0")):
        with pytest.raises(ConfigError, match=key):
            build(LogsConfig, {"yellow": "tcp://127.0.0.1:5555", key: value})


# -- the role ------------------------------------------------------------------------------


def test_the_collectors_options_build_its_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`twistd mmo-logs` builds a worker tree serving the collector as `logs`, with its
    settings from the options, its telemetry, and a shipper for its own events."""
    from mmo.logs.collector import CollectorSettings
    from mmo.logs.tap import Options

    monkeypatch.setenv("MMO_INSECURE", "1")
    options = Options()
    options.parseOptions(
        [
            *("--yellow", "tcp://127.0.0.1:5555", "--dir", str(tmp_path / "a" / "b")),
            *("--ring", "50", "--rotate-bytes", "4096", "--keep", "3", "--instance-id", "logs-9"),
        ]
    )
    tree = options.service
    try:
        worker = tree.getServiceNamed("worker")
        handler = worker.handler
        assert isinstance(handler, LogCollector)
        assert (handler.service_name, handler.instance_id) == ("logs", "logs-9")
        assert handler.settings == CollectorSettings(str(tmp_path / "a" / "b"), 50, 4096, 3)
        assert tree.telemetry.role == "logs" and tree.telemetry.instance == "logs-9"
        assert isinstance(tree.getServiceNamed("logs"), LogShipper)
        assert "client" in handler.registry_meta() and not handler.registry_meta()["client"]
    finally:
        tree.services[0].context.close()


def test_a_directory_that_cannot_be_written_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--dir under a file, or in a directory the process may not write, is refused
    before anything starts."""
    from twisted.python import usage

    from mmo.logs.tap import Options

    monkeypatch.setenv("MMO_INSECURE", "1")
    (tmp_path / "file").write_text("")
    with pytest.raises(usage.UsageError, match=r"--dir: .* is not a directory"):
        Options().parseOptions(
            ["--yellow", "tcp://127.0.0.1:5555", "--dir", str(tmp_path / "file" / "logs")]
        )
    with pytest.raises(usage.UsageError, match="--keep"):
        Options().parseOptions(["--yellow", "tcp://127.0.0.1:5555", "--keep", "0"])


# -- the tools -------------------------------------------------------------------------------


def span_event(
    end: float, ms: float, side: str, role: str, instance: str, method: str, peer: str
) -> dict[str, Any]:
    return {
        "time": iso_time(end),
        "level": "info",
        "role": role,
        "instance": instance,
        "namespace": "mmo.trace",
        "message": f"span {side} ...",
        "trace_id": "T",
        "span": side,
        "service": "player",
        "method": method,
        "outcome": "ok",
        "duration_ms": ms,
        "peer": peer,
    }


def test_mmo_trace_shows_the_path_of_a_request_in_start_order_and_nested() -> None:
    """Spans are ordered by start (end minus duration), offset from the first, each indented
    under the span it ran within; the trace's other events follow."""
    from mmo.cli.logs import render_trace

    t = 1_700_000_000.0
    events = [
        span_event(t + 0.0100, 2.0, "server", "worker", "player-1", "move", "broker-1"),
        span_event(t + 0.0105, 3.0, "client", "broker", "broker-1", "move", "player-1"),
        span_event(t + 0.0200, 1.0, "client", "broker", "broker-1", "look", "map-1"),
        {
            "time": iso_time(t + 0.009),
            "level": "warn",
            "role": "worker",
            "instance": "player-1",
            "namespace": "game",
            "message": "slow move",
            "trace_id": "T",
        },
    ]
    lines = render_trace("T", events).splitlines()
    assert lines[0] == "trace T: 3 spans in 2 processes, 12.500 ms"
    assert lines[1] == "    +0.000 ms  broker/broker-1 client player.move ok 3.0 ms -> player-1"
    assert lines[2] == "    +0.500 ms    worker/player-1 server player.move ok 2.0 ms <- broker-1"
    assert lines[3] == "   +11.500 ms  broker/broker-1 client player.look ok 1.0 ms -> map-1"
    assert lines[4] == "events (1):"
    assert "warn     worker/player-1 game: slow move [trace=T]" in lines[5]


def test_mmo_logs_lines_and_since() -> None:
    """An event prints as `time level role/instance namespace: message [trace=ID]`, its
    traceback indented below; --since takes durations ago, epoch seconds and ISO times."""
    from mmo.cli.common import CommandError
    from mmo.cli.logs import format_event, parse_since

    event = json.loads(line(message="hello", trace_id="abc", traceback="Traceback:\n  boom"))
    assert format_event(event).splitlines() == [
        "2023-11-14T22:13:20.000000Z info     worker/echo-a game: hello [trace=abc]",
        "    Traceback:",
        "      boom",
    ]
    assert parse_since("10m", now=1000.0) == 400.0
    assert parse_since("2h", now=10_000.0) == 2800.0
    assert parse_since("1700000000") == 1_700_000_000.0
    assert parse_since("2023-11-14T22:13:20Z") == 1_700_000_000.0
    with pytest.raises(CommandError, match="--since"):
        parse_since("last tuesday")
