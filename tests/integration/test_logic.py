"""Calls between real processes: yellow + echo workers + a caller in the test process."""

from __future__ import annotations

from collections import Counter

import pytest
import pytest_twisted
from twisted.internet import defer

from mmo.errors import BadRequest, DeadlineExceeded, NoLiveInstance, RemoteError, UnknownMethod

from .conftest import instances, until, wait_instances, wait_links


@pytest.fixture
def two_echoes(cluster, directory_factory):
    """A yellow, two echo workers (echo-a, echo-b) and a Directory that sees both."""
    cluster.yellow()
    cluster.worker("echo-a")
    cluster.worker("echo-b")
    directory = directory_factory(cluster.yellows)
    pytest_twisted.blockon(wait_instances(directory, "echo", {"echo-a", "echo-b"}))
    pytest_twisted.blockon(wait_links(directory, "echo", {"echo-a", "echo-b"}))
    return directory


@pytest_twisted.inlineCallbacks
def test_echo_returns_its_arguments(two_echoes):
    """A call's keyword arguments come back as the reply, with every Value type intact."""
    echo = two_echoes.get_service("echo", "REP")
    args = {"i": -(2**63), "f": 1.5, "s": "héllo", "b": b"\x00\xff", "n": None, "l": [1, [2]]}
    reply = yield echo.echo(**args, m={"k": True})
    assert reply == {**args, "m": {"k": True}}


@pytest_twisted.inlineCallbacks
def test_calls_are_balanced_over_instances(two_echoes):
    """Concurrent calls spread over both live instances (least outstanding first)."""
    echo = two_echoes.get_service("echo")
    replies = yield defer.gatherResults([echo.whoami() for _ in range(40)])
    counts = Counter(replies)
    assert set(counts) == {"echo-a", "echo-b"}
    assert min(counts.values()) >= 10


@pytest_twisted.inlineCallbacks
def test_slow_calls_go_to_the_idle_instance(two_echoes):
    """While one instance holds a slow call, the next call goes to the other one."""
    echo = two_echoes.get_service("echo")
    slow = echo.call("sleep", {"seconds": 1.0})
    busy = [c.instance_id for c in two_echoes.pools.pools["echo"].conns.values() if c.outstanding]
    assert len(busy) == 1
    whos = []
    for _ in range(5):
        whos.append((yield echo.whoami()))
    assert busy[0] not in whos
    assert (yield slow) == 1.0


@pytest_twisted.inlineCallbacks
def test_remote_exception_comes_back_typed(two_echoes):
    """An exception raised in a handler reaches the caller with its type and message."""
    with pytest.raises(RemoteError) as info:
        yield two_echoes.get_service("echo").fail(message="boom")
    assert info.value.type == "EchoFailure"
    assert info.value.message == "boom"


@pytest_twisted.inlineCallbacks
def test_unknown_method_is_its_own_error(two_echoes):
    """Calling a method the service lacks gives UnknownMethod naming it."""
    with pytest.raises(UnknownMethod, match="nosuch"):
        yield two_echoes.get_service("echo").nosuch()


@pytest_twisted.inlineCallbacks
def test_wrong_arguments_are_a_bad_request(two_echoes):
    """Arguments that do not fit the method's signature give BadRequest."""
    with pytest.raises(BadRequest, match="unexpected keyword"):
        yield two_echoes.get_service("echo").whoami(extra=1)


@pytest_twisted.inlineCallbacks
def test_missing_service_is_no_live_instance(two_echoes):
    """A call to a service with no live instance fails at once with NoLiveInstance."""
    with pytest.raises(NoLiveInstance, match="'sso'"):
        yield two_echoes.get_service("sso").login(user="harry")


@pytest_twisted.inlineCallbacks
def test_deadline_passes(two_echoes):
    """A call slower than its deadline fails with DeadlineExceeded when its deadline passes:
    not before, and without waiting for the late reply."""
    echo = two_echoes.get_service("echo", "REP", timeout=0.3)
    started = two_echoes.clock.seconds()
    # The same slow call with a long deadline: its reply marks when the first one's would come.
    twin = echo.call("sleep", {"seconds": 2}, timeout=30)
    with pytest.raises(DeadlineExceeded, match=r"0\.3s"):
        yield echo.sleep(seconds=2)
    assert two_echoes.clock.seconds() - started >= 0.25  # not before its deadline
    assert not twin.called  # nor when the reply came
    assert (yield twin) == 2
    # Per-call override on the same proxy.
    assert (yield echo.call("sleep", {"seconds": 0.5}, timeout=2)) == 0.5


@pytest_twisted.inlineCallbacks
def test_push_and_subscribe(two_echoes):
    """Pushes reach one instance each; its published events reach a subscriber."""
    seen: list[dict] = []
    got_all: defer.Deferred[None] = defer.Deferred()

    def on_event(topic, payload):
        seen.append(payload)
        if len(seen) == 10 and not got_all.called:
            got_all.callback(None)

    two_echoes.get_service("echo", "PUB").subscribe("noted", on_event)
    pusher = two_echoes.get_service("echo", "PULL")
    numbers = iter(range(1_000_000))

    @defer.inlineCallbacks
    def push_then_count():
        yield pusher.note(n=next(numbers))
        return len(seen) >= 10

    # Subscriptions connect asynchronously (PUB drops what no subscriber holds yet):
    # push until the subscriber has seen ten notes.
    yield until(push_then_count, what="ten notes seen by the subscriber", interval=0.02)
    yield got_all.addTimeout(30, two_echoes.clock)
    assert all(p["by"] in {"echo-a", "echo-b"} for p in seen)
    # Each instance publishes the notes it got in the order they were pushed.
    for who in {"echo-a", "echo-b"}:
        numbers = [p["n"] for p in seen if p["by"] == who]
        assert numbers == sorted(numbers)
    assert instances(two_echoes, "echo") == {"echo-a", "echo-b"}


@pytest_twisted.inlineCallbacks
def test_push_to_missing_service_fails(two_echoes):
    """A push to a service with no instance fails with NoLiveInstance."""
    with pytest.raises(NoLiveInstance):
        yield two_echoes.get_service("ghost", "PULL").anything(x=1)
