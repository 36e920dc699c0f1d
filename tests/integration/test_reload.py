"""SIGHUP reloads a running broker's configuration: new limits apply to connections already
open and to new ones, and the log says what changed and what needs a restart."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from mmo.testing import free_port
from mmo.testing.rawclient import RawClient, Received
from mmo.wire.gen.mmo.ttypes import ClientError, PacketKind

#: Before login the anonymous route is served (no sso worker here: each request ends as
#: an ERROR once its deadline, request-timeout, passes, and the connection stays open); it
#: takes a token of the packet rate as any packet does.
ANONYMOUS = "sso.register"
#: What a forwarded request gets here (no worker serves it), rather than a limit's ERROR.
FORWARDED = {ClientError.UNAVAILABLE, ClientError.TIMEOUT}


def write_config(path: Path, yellow: str, limits: str) -> None:
    path.write_text(
        f'[broker]\nyellow = ["{yellow}"]\nlogin-timeout = 60\nrequest-timeout = 0.5\n{limits}'
    )


def errors_for(client: RawClient, count: int) -> list[Received]:
    """Send ``count`` anonymous requests in one write; the ERRORs they get."""
    frames = b"".join(client.frame(PacketKind.REQUEST, ANONYMOUS, {}) for _ in range(count))
    client.send_bytes(frames)
    replies: list[Received] = []
    while True:
        try:
            packet = client.recv()
        except TimeoutError:
            return replies
        assert packet.kind == PacketKind.ERROR, packet
        replies.append(packet)


def codes(replies: list[Received]) -> list[str]:
    """``forwarded`` for a request that passed the limits, else the ERROR's code."""
    return [
        "forwarded"
        if r.code in FORWARDED and r.seq
        else ClientError._VALUES_TO_NAMES.get(r.code, str(r.code))
        for r in replies
    ]


@pytest.mark.timeout(90)
def test_sighup_applies_new_limits_to_a_running_broker(
    cluster: Any, mmo_processes: Any, tmp_path: Path
) -> None:
    cluster.yellow()
    path = tmp_path / "broker.toml"
    write_config(path, cluster.yellows[0], "rate = 100\nburst = 5\nmax-frame = 2048\n")
    port = free_port()
    broker = mmo_processes.start(
        "mmo-broker",
        "--config",
        str(path),
        "--listen",
        f"tcp:{port}:interface=127.0.0.1",
        "--instance-id",
        "broker-reload",
        name="broker",
        env={"MMO_DEMO": "1"},
    )
    assert broker.wait_for_log("serving clients on", timeout=30), broker.log_tail()

    # The old limits: a burst of 5, then one RATE_LIMITED for the packets over it.
    old = RawClient(port, timeout=2)
    replies = errors_for(old, 20)
    assert sorted(codes(replies)) == ["RATE_LIMITED"] + ["forwarded"] * 5, replies
    # A 1000-byte packet passes under max-frame 2048.
    old.send(PacketKind.REQUEST, ANONYMOUS, {"pad": "x" * 1000})
    assert codes([old.recv()]) == ["forwarded"]

    write_config(path, cluster.yellows[0], "rate = 100\nburst = 50\nmax-frame = 512\n")
    broker.signal(signal.SIGHUP)
    assert broker.wait_for_log("applied", timeout=10), broker.log_tail()
    tail = broker.log_tail(50)
    assert "burst 5 -> 50" in tail and "max-frame 2048 -> 512" in tail, tail

    # A new connection gets the new burst: 20 at once all pass.
    new = RawClient(port, timeout=2)
    assert codes(errors_for(new, 20)) == ["forwarded"] * 20
    # The connection opened before takes the new max-frame from its next packet.
    old.send(PacketKind.REQUEST, ANONYMOUS, {"pad": "x" * 1000})
    packet = old.recv()
    assert (packet.kind, packet.code) == (PacketKind.ERROR, ClientError.TOO_LARGE)
    assert old.closed()

    # A restart-only setting is reported and left alone; a bad file changes nothing.
    write_config(path, cluster.yellows[0], "rate = 100\nburst = 50\nmax-frame = 512\n")
    with path.open("a") as f:
        f.write("public-host = 'game.example'\n")  # (--listen on the command line wins)
    broker.signal(signal.SIGHUP)
    assert broker.wait_for_log("needs a restart", timeout=10), broker.log_tail()
    assert "public-host None -> 'game.example'" in broker.log_tail(5)
    path.write_text("[broker\n")
    broker.signal(signal.SIGHUP)
    assert broker.wait_for_log("nothing changed, the settings in force stay", timeout=10)
    client = RawClient(port, timeout=2)  # still listening where it was, with the limits
    assert codes(errors_for(client, 20)) == ["forwarded"] * 20
    for c in (old, new, client):
        c.close()
    assert broker.alive()
