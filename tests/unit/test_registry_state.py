"""The yellow's registry state: registration, expiry, TTL bounds and the ordered change feed."""

from __future__ import annotations

import pytest
from twisted.internet import task

from mmo.wire import to_value
from mmo.wire.gen.mmo.ttypes import Change, Instance, RegistryMessage, RegistryOp
from mmo.yellow.registry import DEFAULT_TTL_MS, MAX_TTL_MS, MIN_TTL_MS, Registry


def make(
    service: str = "echo", iid: str = "echo-1", ttl_ms: int | None = 1000, load: float = 0.0
) -> Instance:
    """A fresh Instance record, as a yellow decodes one from each heartbeat."""
    return Instance(
        service_name=service,
        instance_id=iid,
        endpoints={"rep": "tcp://127.0.0.1:5501"},
        meta={"load": to_value(load)},
        ttl_ms=ttl_ms,
    )


class Feed:
    """Collects the UPDATE messages a Registry announces."""

    def __init__(self) -> None:
        self.updates: list[RegistryMessage] = []

    def __call__(self, msg: RegistryMessage) -> None:
        self.updates.append(msg)

    def summary(self) -> list[tuple[int, int, str, str]]:
        """(seq, change, instance_id, reason) of each update, in order."""
        return [(m.seq, m.change, m.instance.instance_id, m.reason) for m in self.updates]


@pytest.fixture
def clock() -> task.Clock:
    return task.Clock()


@pytest.fixture
def feed() -> Feed:
    return Feed()


@pytest.fixture
def registry(clock: task.Clock, feed: Feed) -> Registry:
    return Registry(clock, "yellow-A", feed)


def test_register_announces_up_with_consecutive_seqs(registry: Registry, feed: Feed) -> None:
    """Each new instance is announced as an UP 'registered' UPDATE with seq 1, 2, 3."""
    for iid in ("a", "b", "c"):
        registry.register(make(iid=iid))
    assert feed.summary() == [
        (1, Change.UP, "a", "registered"),
        (2, Change.UP, "b", "registered"),
        (3, Change.UP, "c", "registered"),
    ]
    assert registry.seq == 3
    for msg in feed.updates:
        assert msg.op == RegistryOp.UPDATE
        assert msg.yellow_id == "yellow-A"


def test_identical_heartbeat_only_refreshes(
    registry: Registry, feed: Feed, clock: task.Clock
) -> None:
    """Re-registering an identical record announces nothing but pushes the expiry back."""
    registry.register(make(ttl_ms=1000))
    for _ in range(5):
        clock.advance(0.9)
        registry.register(make(ttl_ms=1000))
        assert registry.expire() == 0
    assert len(feed.updates) == 1
    assert registry.seq == 1
    clock.advance(0.99)
    assert registry.expire() == 0
    assert len(registry) == 1


def test_changed_meta_announces_changed(registry: Registry, feed: Feed) -> None:
    """A heartbeat whose meta differs replaces the record and is announced as UP 'changed'."""
    registry.register(make(load=0.1))
    registry.register(make(load=0.9))
    assert feed.summary() == [
        (1, Change.UP, "echo-1", "registered"),
        (2, Change.UP, "echo-1", "changed"),
    ]
    assert registry.query("echo") == [make(load=0.9)]
    assert feed.updates[-1].instance == make(load=0.9)


def test_changed_endpoints_announce_changed(registry: Registry, feed: Feed) -> None:
    """A restarted instance re-registering with new endpoints is announced as 'changed'."""
    registry.register(make())
    moved = make()
    moved.endpoints = {"rep": "tcp://127.0.0.1:6000"}
    registry.register(moved)
    assert feed.summary()[-1] == (2, Change.UP, "echo-1", "changed")
    assert registry.query()[0].endpoints == {"rep": "tcp://127.0.0.1:6000"}


def test_expiry_after_ttl_and_not_before(registry: Registry, feed: Feed, clock: task.Clock) -> None:
    """An instance that stops beating is dropped once ttl_ms has passed, not a moment sooner."""
    registry.register(make(ttl_ms=2000))
    clock.advance(1.999)
    assert registry.expire() == 0
    assert registry.query("echo") != []
    clock.advance(0.001)
    assert registry.expire() == 1
    assert registry.query("echo") == []
    assert feed.summary()[-1] == (2, Change.DOWN, "echo-1", "expired")
    assert registry.expire() == 0
    assert len(feed.updates) == 2


def test_expiry_only_drops_the_silent(registry: Registry, feed: Feed, clock: task.Clock) -> None:
    """Of two instances, only the one that stopped heartbeating expires."""
    registry.register(make(iid="alive"))
    registry.register(make(iid="dead"))
    for _ in range(3):
        clock.advance(0.6)
        registry.register(make(iid="alive"))
        registry.expire()
    assert [i.instance_id for i in registry.query()] == ["alive"]
    assert feed.summary()[-1] == (3, Change.DOWN, "dead", "expired")


@pytest.mark.parametrize(
    ("asked", "lasts_ms"),
    [
        (1, MIN_TTL_MS),
        (-5000, MIN_TTL_MS),
        (None, DEFAULT_TTL_MS),
        (0, DEFAULT_TTL_MS),
        (10 * MAX_TTL_MS, MAX_TTL_MS),
        (1500, 1500),
    ],
)
def test_ttl_is_clamped(
    registry: Registry, clock: task.Clock, asked: int | None, lasts_ms: int
) -> None:
    """The TTL an instance asks for is bounded to [MIN_TTL_MS, MAX_TTL_MS] (default when unset)."""
    registry.register(make(ttl_ms=asked))
    clock.advance(lasts_ms / 1000 - 0.001)
    assert registry.expire() == 0
    clock.advance(0.001)
    assert registry.expire() == 1


def test_deregister_announces_down(registry: Registry, feed: Feed) -> None:
    """A goodbye removes the instance at once and announces DOWN 'deregistered'."""
    registry.register(make())
    assert registry.deregister("echo", "echo-1") is True
    assert registry.query() == []
    assert feed.summary()[-1] == (2, Change.DOWN, "echo-1", "deregistered")
    assert feed.updates[-1].instance == make()


def test_deregister_unknown_is_false(registry: Registry, feed: Feed) -> None:
    """Deregistering an unknown instance (or a known id under another service) changes nothing."""
    registry.register(make())
    assert registry.deregister("echo", "nope") is False
    assert registry.deregister("other", "echo-1") is False
    assert registry.seq == 1
    assert len(feed.updates) == 1
    assert len(registry) == 1


def test_query_by_service_and_all(registry: Registry) -> None:
    """Query returns the live instances of one service, or of every service when unset."""
    registry.register(make("echo", "e1"))
    registry.register(make("echo", "e2"))
    registry.register(make("sso", "s1"))
    assert sorted(i.instance_id for i in registry.query("echo")) == ["e1", "e2"]
    assert [i.instance_id for i in registry.query("sso")] == ["s1"]
    assert registry.query("missing") == []
    assert sorted(i.instance_id for i in registry.query()) == ["e1", "e2", "s1"]
    assert len(registry) == 3


def test_same_instance_id_in_two_services_are_distinct(registry: Registry) -> None:
    """Instances are keyed by (service, id): the same id under two services is two entries."""
    registry.register(make("echo", "x"))
    registry.register(make("sso", "x"))
    assert len(registry) == 2
    registry.deregister("echo", "x")
    assert [i.service_name for i in registry.query()] == ["sso"]


def test_seq_increases_by_one_across_mixed_changes(
    registry: Registry, feed: Feed, clock: task.Clock
) -> None:
    """Registrations, changes, goodbyes and expiries share one gap-free sequence."""
    registry.register(make(iid="a", ttl_ms=500))
    registry.register(make(iid="b", ttl_ms=5000))
    registry.register(make(iid="b", ttl_ms=5000))  # heartbeat: no update
    registry.register(make(iid="b", ttl_ms=5000, load=1.0))
    registry.register(make(iid="c", ttl_ms=5000))
    registry.deregister("echo", "c")
    clock.advance(1)
    registry.expire()
    registry.register(make(iid="a", ttl_ms=500))
    assert feed.summary() == [
        (1, Change.UP, "a", "registered"),
        (2, Change.UP, "b", "registered"),
        (3, Change.UP, "b", "changed"),
        (4, Change.UP, "c", "registered"),
        (5, Change.DOWN, "c", "deregistered"),
        (6, Change.DOWN, "a", "expired"),
        (7, Change.UP, "a", "registered"),
    ]
    assert registry.seq == 7
