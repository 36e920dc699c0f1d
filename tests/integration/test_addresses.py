"""Bind here, advertise there: roles bound to every interface (or by interface name) are
listed in the registry and the brokerlist only under addresses others can reach, with the
ports they really got."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from mmo.testing import TwistdProcess
from mmo.testing.rawclient import RawClient

from .conftest import ECHO, wait_instances, wait_until
from .edge import EdgeCluster

pytestmark = pytest.mark.timeout(90)


@pytest_twisted.inlineCallbacks
def test_a_worker_bound_to_every_interface_is_listed_under_its_advertised_host(
    cluster: Any, directory_factory: Any
) -> Any:
    """--bind-host 0.0.0.0 --advertise-host 127.0.0.1, and --bind-host lo (an interface):
    the registry lists tcp://127.0.0.1:PORT for each (never 0.0.0.0 or a name), calls work."""
    cluster.yellow()
    cluster.worker("echo-any", extra=("--bind-host", "0.0.0.0", "--advertise-host", "127.0.0.1"))
    cluster.worker("echo-lo", extra=("--bind-host", "lo"))
    directory = directory_factory(cluster.yellows)
    yield wait_instances(directory, "echo", {"echo-any", "echo-lo"})
    for instance in directory.view.get("echo"):
        for endpoint in (instance.endpoints or {}).values():
            host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
            assert host == "127.0.0.1" and int(port) > 0, endpoint
    for iid in ("echo-any", "echo-lo"):
        reply = yield directory.call("echo", "whoami", instance=iid, timeout=5)
        assert reply == iid


def test_binding_every_interface_without_an_address_to_advertise_is_refused(
    tmp_path: Path,
) -> None:
    """A worker told --bind-host 0.0.0.0 and nothing to advertise exits at once, naming
    advertise-host, instead of registering tcp://0.0.0.0:PORT."""
    args = ["--yellow", "tcp://127.0.0.1:1", "--handler", ECHO, "--bind-host", "0.0.0.0"]
    worker = TwistdProcess("mmo-worker", args, tmp_path, "echo").start()
    assert worker.wait(60) not in (None, 0)
    assert "advertise-host" in worker.log_tail()


def test_a_broker_on_every_interface_is_listed_with_its_public_host_and_real_port(
    tmp_path: Path,
) -> None:
    """A broker listening on port 0 of every interface, its internal endpoint bound to every
    interface too: the brokerlist lists PUBLIC_HOST:<the port it got>, and a player logs in
    there."""
    cluster = EdgeCluster(tmp_path, brokers=0)
    try:
        cluster._start(
            "broker-any",
            "mmo-broker",
            [
                *("--yellow", cluster.yellow, "--instance-id", "broker-any"),
                *("--listen", "tcp:0:interface=0.0.0.0", "--public-host", "127.0.0.1"),
                *("--bind-host", "0.0.0.0", "--advertise-host", "127.0.0.1"),
            ],
            {},
        )

        def listed() -> dict[str, float]:
            with contextlib.suppress(OSError):
                return cluster.brokerlist()["brokerList"]
            return {}  # not serving yet

        (address,) = wait_until(listed, what="the broker listed", interval=0.2)
        host, _, port = address.rpartition(":")
        assert host == "127.0.0.1" and int(port) > 0
        client = RawClient(int(port))
        try:
            assert client.login("alice", "pw-alice")["user_id"] == "alice"
            assert client.request("echo.echo", {"x": 1}).value == {"x": 1}
        finally:
            client.close()
    finally:
        cluster.stop()
