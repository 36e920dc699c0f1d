"""The yellow's telemetry: Prometheus service discovery (``GET /sd``) from its registry,
its registry metrics and its readiness, on a fake ZeroMQ context with no reactor running.

Providers register through the server's ROUTER socket as they would over the wire; the
``/sd`` resource is rendered on a request that never touches a socket.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import task
from twisted.web import server
from twisted.web.test.requesthelper import DummyChannel

from mmo.registry import make_instance
from mmo.telemetry.metrics import Telemetry
from mmo.testing import FakeZmqContext
from mmo.wire import encode
from mmo.wire.gen.mmo.ttypes import Instance, RegistryMessage, RegistryOp
from mmo.yellow.config import YellowConfig
from mmo.yellow.sd import ServiceDiscovery, target_groups
from mmo.yellow.service import YellowServer, make_yellow_service, yellow_telemetry

LISTEN = "tcp://127.0.0.1:5555"
OPS = "127.0.0.1:9555"


class Yellow:
    """A started YellowServer on a fake context, with its telemetry."""

    def __init__(self) -> None:
        self.clock = task.Clock()
        self.ctx = FakeZmqContext(self.clock)
        self.server = YellowServer(YellowConfig(listen=LISTEN), SimpleNamespace(context=self.ctx))  # type: ignore[arg-type]
        self.telemetry = yellow_telemetry(self.server)
        self.server.startService()
        (self.router,) = self.ctx.sockets

    def register(self, service: str, instance_id: str, **meta: Any) -> Instance:
        """Register an instance with ``meta`` through the socket, as a provider does."""
        instance = make_instance(service, instance_id, {}, meta)
        message = RegistryMessage(op=RegistryOp.REGISTER, request_id=1, instance=instance)
        self.router.deliver([instance_id.encode(), encode(message)])
        return instance

    def deregister(self, service: str, instance_id: str) -> None:
        """Say goodbye for an instance."""
        message = RegistryMessage(
            op=RegistryOp.DEREGISTER, request_id=2, service_name=service, instance_id=instance_id
        )
        self.router.deliver([instance_id.encode(), encode(message)])

    def sd(self, host: bytes = b"127.0.0.1:9555") -> tuple[list[dict[str, Any]], server.Request]:
        """``GET /sd`` sent to ``host``: the target groups, and the request (its headers)."""
        request = server.Request(DummyChannel())
        request.method = b"GET"
        request.requestHeaders.setRawHeaders(b"host", [host])
        body = self.telemetry.resources[b"sd"].render(request)
        return json.loads(body), request

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """What a scrape of the yellow reads: value by (name, labels)."""
        text = generate_latest(self.telemetry.registry).decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


def group(address: str, role: str, service: str, instance_id: str) -> dict[str, Any]:
    """A target group as Prometheus reads it."""
    return {
        "targets": [address],
        "labels": {"role": role, "mmo_service": service, "mmo_instance": instance_id},
    }


def test_sd_lists_each_instance_with_metrics_and_the_yellow_first() -> None:
    """Instances that publish an operator listener are targets labelled with their role,
    service and instance id, after the yellow itself; one without a listener is not."""
    yellow = Yellow()
    yellow.telemetry.listening(OPS)
    yellow.register("echo", "echo-1", metrics="127.0.0.1:40001")
    yellow.register("echo", "echo-2", metrics="127.0.0.1:40002")
    yellow.register("broker", "broker-1", metrics="127.0.0.1:40003", pid=12)
    yellow.register("chat", "chat-1")  # no --metrics: nothing to scrape
    groups, request = yellow.sd()
    assert groups == [
        group(OPS, "yellow", "yellow", yellow.server.yellow_id),
        group("127.0.0.1:40003", "broker", "broker", "broker-1"),
        group("127.0.0.1:40001", "worker", "echo", "echo-1"),
        group("127.0.0.1:40002", "worker", "echo", "echo-2"),
    ]
    assert request.responseHeaders.getRawHeaders(b"content-type") == [b"application/json"]


def test_sd_follows_the_registry_as_instances_come_and_go() -> None:
    """A deregistered instance and an expired one leave the targets; a new one joins."""
    yellow = Yellow()
    yellow.telemetry.listening(OPS)
    yellow.register("echo", "echo-1", metrics="127.0.0.1:40001")
    yellow.register("echo", "echo-2", metrics="127.0.0.1:40002")
    yellow.deregister("echo", "echo-1")
    assert [g["labels"]["mmo_instance"] for g in yellow.sd()[0][1:]] == ["echo-2"]
    yellow.clock.advance(10)  # echo-2 stopped heartbeating: expired
    yellow.register("echo", "echo-3", metrics="127.0.0.1:40003")
    assert [g["labels"]["mmo_instance"] for g in yellow.sd()[0][1:]] == ["echo-3"]


def test_role_comes_from_meta_else_from_what_registered() -> None:
    """Meta ``role`` names the role; else a broker and a brokerlist are what they register
    as, a dispatcher with ``fight_handler`` is a fight, anything else a worker."""
    yellow = Yellow()
    yellow.register("sessions", "s-1", metrics="h:1", role="session")
    yellow.register("broker", "b-1", metrics="h:2")
    yellow.register("brokerlist", "bl-1", metrics="h:5")
    yellow.register("fight", "f-1", metrics="h:3", fight_handler="mmo.examples.fight:TurnFight")
    yellow.register("fight-process", "fp-1", metrics="h:4")
    roles = {g["labels"]["mmo_instance"]: g["labels"]["role"] for g in yellow.sd()[0]}
    assert roles == {
        "s-1": "session",
        "b-1": "broker",
        "bl-1": "brokerlist",
        "f-1": "fight",
        "fp-1": "worker",
    }


def test_one_process_registered_twice_is_one_target() -> None:
    """Two registrations publishing one listener make one target (the first by service),
    and a yellow whose own listener a registration also publishes is listed once."""
    yellow = Yellow()
    yellow.telemetry.listening(OPS)
    yellow.register("echo", "x-1", metrics="127.0.0.1:40001")
    yellow.register("chat", "x-1", metrics="127.0.0.1:40001")
    yellow.register("echo", "in-yellow", metrics=OPS)
    groups = yellow.sd()[0]
    assert groups == [
        group(OPS, "yellow", "yellow", yellow.server.yellow_id),
        group("127.0.0.1:40001", "worker", "chat", "x-1"),
    ]


def test_yellow_is_listed_once_listening_and_at_the_host_asked_when_unspecified() -> None:
    """Before its listener listens the yellow lists only the others; listening on every
    interface, it lists itself at the host Prometheus sent the request to."""
    yellow = Yellow()
    yellow.register("echo", "echo-1", metrics="10.0.0.2:40001")
    assert [g["labels"]["role"] for g in yellow.sd()[0]] == ["worker"]
    yellow.telemetry.listening("0.0.0.0:9555")
    assert yellow.sd(b"yellow.example:9555")[0][0]["targets"] == ["yellow.example:9555"]
    yellow.telemetry.listening("[::]:9555")
    assert yellow.sd(b"[fd00::1]:9555")[0][0]["targets"] == ["[fd00::1]:9555"]


def test_a_meta_that_is_not_an_address_is_no_target() -> None:
    """A ``metrics`` meta that is not a non-empty string is ignored, not an error."""
    instances = [
        make_instance("echo", "a", {}, {"metrics": 9555}),
        make_instance("echo", "b", {}, {"metrics": ""}),
        make_instance("echo", "c", {}, {"metrics": ["h:1"]}),
    ]
    assert target_groups(instances) == []


def test_the_yellow_reports_its_registry() -> None:
    """A scrape reads the live instances by service, the watchers, the messages by op
    and the changes by reason."""
    yellow = Yellow()
    yellow.register("echo", "echo-1")
    yellow.register("echo", "echo-2")
    yellow.register("chat", "chat-1")
    yellow.register("echo", "echo-1")  # a heartbeat: no change
    yellow.deregister("chat", "chat-1")
    watch = RegistryMessage(op=RegistryOp.WATCH, request_id=3)
    yellow.router.deliver([b"watcher", encode(watch)])
    samples = yellow.samples()
    assert samples[("mmo_registry_instances", (("service", "echo"),))] == 2
    assert ("mmo_registry_instances", (("service", "chat"),)) not in samples
    assert samples[("mmo_yellow_watchers", ())] == 1
    assert samples[("mmo_yellow_messages_total", (("op", "register"),))] == 4
    assert samples[("mmo_yellow_messages_total", (("op", "deregister"),))] == 1
    assert samples[("mmo_yellow_changes_total", (("reason", "registered"),))] == 3
    assert samples[("mmo_yellow_changes_total", (("reason", "deregistered"),))] == 1
    assert samples[("mmo_yellow_seq", ())] == 4
    yellow.router.deliver([b"bad", b"not a registry message"])
    assert yellow.samples()[("mmo_yellow_bad_messages_total", ())] == 1
    info = ("mmo_info", (("mmo_instance", yellow.server.yellow_id), ("role", "yellow")))
    assert any(key[0] == info[0] and set(info[1]) <= set(key[1]) for key in samples)


def test_ready_once_the_socket_is_bound() -> None:
    """The yellow is not ready before its socket is bound nor after it closed."""
    clock = task.Clock()
    ctx = FakeZmqContext(clock)
    yellow = YellowServer(YellowConfig(listen=LISTEN), SimpleNamespace(context=ctx))  # type: ignore[arg-type]
    telemetry = yellow_telemetry(yellow)
    assert telemetry.readiness()[0] is False
    yellow.startService()
    ready, checks = telemetry.readiness()
    assert ready and checks["listening"]["ok"]
    yellow.stopService()
    assert telemetry.readiness()[0] is False


def test_the_tree_carries_the_yellows_telemetry() -> None:
    """make_yellow_service's tree carries a yellow Telemetry named after the server's id,
    with the /sd page, and still only the context and the server as children."""
    top = make_yellow_service(YellowConfig(listen=LISTEN), reactor=task.Clock())
    _, yellow = list(top)
    telemetry = top.telemetry  # type: ignore[attr-defined]
    assert isinstance(telemetry, Telemetry)
    assert (telemetry.role, telemetry.instance) == ("yellow", yellow.yellow_id)
    assert isinstance(telemetry.resources[b"sd"], ServiceDiscovery)
