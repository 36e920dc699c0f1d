"""The bridge's settings and how a session is named across clusters (the links
themselves are tested with real processes: tests/integration/test_bridge.py)."""

from __future__ import annotations

from typing import Any

import pytest

from mmo.bridge.config import BridgeConfig
from mmo.bridge.service import crossing, link_keys
from mmo.config import ConfigError, build
from mmo.wire.gen.mmo.ttypes import Session
from mmo.zmq.curve import create_keys

BASE = {"yellow": ["tcp://127.0.0.1:5555"], "cluster": "eu", "listen": "tcp://127.0.0.1:7100",
        "peers": {"us": "tcp://10.0.0.2:7100,tcp://10.0.0.3:7100"}}  # fmt: skip


def config(**changes: Any) -> BridgeConfig:
    return build(BridgeConfig, {**BASE, **changes})


def test_a_peer_may_have_several_bridges() -> None:
    assert config().peer_addresses("us") == ["tcp://10.0.0.2:7100", "tcp://10.0.0.3:7100"]


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"cluster": "EU!"}, "cluster"),
        ({"peers": {}}, "peer"),
        ({"peers": {"eu": "tcp://10.0.0.2:7100"}}, "peer"),  # itself
        ({"peers": {"us": ""}}, "peer"),
        ({"peers": {"us": "10.0.0.2:7100"}}, "peer"),
        ({"exports": ["us:market"]}, "export"),
        ({"heartbeat": 1.0, "link_timeout": 1.5}, "link-timeout"),
        ({"listen": "nowhere"}, "listen"),
    ],
)
def test_bad_settings_are_refused_naming_the_option(changes: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as refused:
        config(**changes)
    assert refused.value.key == key, refused.value


def test_the_links_need_keys_with_each_peers_key_outside_insecure_mode(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MMO_DEMO", raising=False)
    monkeypatch.delenv("MMO_INSECURE", raising=False)
    with pytest.raises(ConfigError, match="need CURVE keys"):
        link_keys(config())
    create_keys(tmp_path / "keys")
    with pytest.raises(ConfigError, match=r"authorized/us\.key"):
        link_keys(config(link_keys=str(tmp_path / "keys")))
    create_keys(tmp_path / "us")
    (tmp_path / "keys" / "authorized" / "us.key").write_bytes(
        (tmp_path / "us" / "cluster.key").read_bytes()
    )
    keys = link_keys(config(link_keys=str(tmp_path / "keys")))
    assert keys is not None and len(keys.authorized) == 2  # its own, and the peer's


def test_a_session_is_named_by_its_cluster_across_and_by_itself_back() -> None:
    here = Session(id="s1", user_id="carol", broker="broker-1")
    there = crossing(here, "us", "eu")
    assert there is not None and (there.id, there.user_id, there.broker) == (
        "s1",
        "carol",
        "us:broker-1",
    )
    back = crossing(Session(id="s1", user_id="carol", broker="us:broker-1"), "eu", "us")
    assert back is not None and back.broker == "broker-1"
    # A third cluster's session keeps its name; no session stays none.
    assert crossing(Session(id="s2", broker="asia:b"), "us", "eu").broker == "asia:b"  # type: ignore[union-attr]
    assert crossing(None, "us", "eu") is None
