"""OrderedMultiService and PreparedService: start order, stop order one after another, a
failing child, and children that start only once something slow is prepared."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from typing_extensions import override

import mmo.service
from mmo.service import OrderedMultiService, PreparedService
from mmo.testing import result_of


class Child(Service):
    """A child that writes its starts and stops to a shared journal.

    Its stop returns ``stop_result``: None (done at once), a Deferred the test fires,
    or an exception to raise.
    """

    def __init__(self, name: str, journal: list[str], stop_result: Any = None) -> None:
        self.setName(name)
        self.journal = journal
        self.stop_result = stop_result
        self.start_error: Exception | None = None

    @override
    def startService(self) -> None:
        if self.start_error is not None:
            raise self.start_error
        super().startService()
        self.journal.append(f"start {self.name}")

    @override
    def stopService(self) -> Any:
        super().stopService()
        self.journal.append(f"stop {self.name}")
        if isinstance(self.stop_result, Exception):
            raise self.stop_result
        return self.stop_result


class Prepared(PreparedService):
    """A PreparedService whose prepare returns a Deferred the test fires."""

    def __init__(self, journal: list[str]) -> None:
        super().__init__()
        self.setName("prepared")
        self.journal = journal
        self.preparing: defer.Deferred[None] = defer.Deferred()
        self.failures: list[Any] = []

    @override
    def prepare(self) -> defer.Deferred[None]:
        self.journal.append("prepare")
        return self.preparing

    @override
    def ready(self) -> None:
        self.journal.append("ready")

    @override
    def failed(self, failure: Any) -> None:
        self.failures.append(failure)


@pytest.fixture
def journal() -> list[str]:
    """Where the children write their starts and stops, in order."""
    return []


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """The log events mmo.service emits during the test."""
    events: list[dict[str, Any]] = []
    monkeypatch.setattr(mmo.service, "log", Logger(namespace="mmo.service", observer=events.append))
    yield events


def tree(journal: list[str], *stop_results: Any) -> tuple[OrderedMultiService, list[Child]]:
    """An ordered tree of children a, b, c... with the given stop results."""
    top = OrderedMultiService()
    children = []
    for name, stop_result in zip("abcdef", stop_results, strict=False):
        c = Child(name, journal, stop_result)
        c.setServiceParent(top)
        children.append(c)
    return top, children


def test_children_start_in_the_order_they_were_added(journal: list[str]) -> None:
    """startService starts the children first to last."""
    top, _ = tree(journal, None, None, None)
    top.startService()
    assert journal == ["start a", "start b", "start c"]


def test_children_stop_last_first_each_after_the_one_before(journal: list[str]) -> None:
    """stopService stops c, then b only once c's stop has finished, then a; its Deferred
    fires after the last one."""
    c_done: defer.Deferred[None] = defer.Deferred()
    b_done: defer.Deferred[None] = defer.Deferred()
    top, _ = tree(journal, None, b_done, c_done)
    top.startService()
    del journal[:]
    stopped = top.stopService()
    assert journal == ["stop c"] and not stopped.called
    c_done.callback(None)
    assert journal == ["stop c", "stop b"] and not stopped.called
    b_done.callback(None)
    assert journal == ["stop c", "stop b", "stop a"]
    assert stopped.called and not top.running


def test_a_child_whose_stop_fails_is_logged_and_the_others_still_stop(
    journal: list[str], logged: list[dict[str, Any]]
) -> None:
    """A child raising or failing its stop is logged with its name; the children before it
    stop all the same and the tree's stop succeeds."""
    failing: defer.Deferred[None] = defer.fail(OSError("disk gone"))
    top, _ = tree(journal, None, RuntimeError("stop raised"), failing)
    top.startService()
    del journal[:]
    result_of(top.stopService())
    assert journal == ["stop c", "stop b", "stop a"]
    failures = [e for e in logged if "log_failure" in e]
    assert [e["child"] for e in failures] == ["c", "b"]
    assert failures[0]["log_failure"].check(OSError)
    assert failures[1]["log_failure"].check(RuntimeError)


def test_children_that_are_not_running_are_not_stopped(journal: list[str]) -> None:
    """A child already stopped by hand is skipped when the tree stops."""
    top, children = tree(journal, None, None)
    top.startService()
    children[0].stopService()
    del journal[:]
    result_of(top.stopService())
    assert journal == ["stop b"]


# -- PreparedService -----------------------------------------------------------------


def prepared(journal: list[str]) -> Prepared:
    """A PreparedService with children a and b, not started."""
    service = Prepared(journal)
    for name in "ab":
        Child(name, journal).setServiceParent(service)
    return service


def test_children_start_only_once_prepare_is_done(journal: list[str]) -> None:
    """While prepare's Deferred is pending no child runs and when_started waits; when it
    fires the children start in order, ready is called, and when_started fires."""
    service = prepared(journal)
    service.startService()
    waiting = service.when_started()
    assert journal == ["prepare"] and not waiting.called
    service.preparing.callback(None)
    assert journal == ["prepare", "start a", "start b", "ready"]
    assert waiting.called and result_of(service.when_started()) is None


def test_a_failed_prepare_starts_nothing_and_fails_when_started(journal: list[str]) -> None:
    """prepare failing: failed() is told, no child starts, when_started fails with why
    (also when asked afterwards); the service stays up for its process to decide."""
    service = prepared(journal)
    service.startService()
    waiting = service.when_started()
    service.preparing.errback(ValueError("schema too new"))
    assert journal == ["prepare"] and service.running
    assert [f.check(ValueError) for f in service.failures] == [ValueError]
    for d in (waiting, service.when_started()):
        with pytest.raises(ValueError, match="schema too new"):
            result_of(d)


def test_a_child_failing_to_start_stops_the_ones_started(journal: list[str]) -> None:
    """A child raising in startService fails the start: the children started before it
    are stopped again and when_started fails with the child's error."""
    service = prepared(journal)
    children = list(service)
    third = Child("c", journal)
    third.start_error = OSError("address in use")
    third.setServiceParent(service)
    service.startService()
    service.preparing.callback(None)
    assert journal == ["prepare", "start a", "start b", "stop b", "stop a"]
    assert not any(c.running for c in children)
    with pytest.raises(OSError, match="address in use"):
        result_of(service.when_started())


def test_stopping_while_preparing_never_starts_the_children(journal: list[str]) -> None:
    """A stop before prepare is done: when it finishes, no child starts and ready is not
    called; the stop itself completes at once."""
    service = prepared(journal)
    service.startService()
    stopped = service.stopService()
    assert stopped.called
    service.preparing.callback(None)
    assert journal == ["prepare"]
    assert not any(c.running for c in service)


def test_a_plain_prepare_starts_the_children_at_once(journal: list[str]) -> None:
    """The default prepare (nothing to wait for) starts the children during startService."""
    service = PreparedService()
    Child("a", journal).setServiceParent(service)
    service.startService()
    assert journal == ["start a"]
    assert result_of(service.when_started()) is None
