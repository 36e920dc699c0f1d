"""A real Prometheus scrapes a real cluster it finds through the yellow's service discovery.

The module starts a cluster (a yellow, two echo workers, a broker and a brokerlist, each
with ``--metrics``: the yellow at a fixed port, the others at a free one they publish in
the registry) and a ``prometheus`` process (Debian's package, which scripts/ensure-servers
installs), configured from etc/prometheus.yml with the test's yellow and 1 s intervals.
The tests read what Prometheus says through its HTTP API: which targets it found and
whether they are up, and what PromQL answers about the requests the test sent.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, threads

from mmo.testing import TwistdProcess, free_port

from .conftest import ECHO, sleep, until, wait_instances, wait_links, wait_until

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = ROOT / "etc" / "prometheus.yml"
DASHBOARD = ROOT / "etc" / "grafana" / "mmo.json"
ECHOES = ("echo-1", "echo-2")
#: The processes Prometheus must find, as (role, registered service, instance id); the
#: yellow's instance id is its own, known from its /sd.
MEMBERS = {
    ("worker", "echo", "echo-1"),
    ("worker", "echo", "echo-2"),
    ("broker", "broker", "broker-1"),
    ("brokerlist", "brokerlist", "brokerlist-1"),
}
#: The load the request test sends: calls per second, for this many seconds.
RATE, SECONDS = 20, 6


def prometheus_binary() -> str:
    """Where ``prometheus`` is; a missing one fails the tests (it is not a reason to skip)."""
    found = shutil.which("prometheus") or shutil.which("prometheus", path="/usr/bin:/usr/sbin")
    if found is None:
        pytest.fail("prometheus is not installed: run scripts/ensure-servers (as root)")
    return found


class PrometheusProcess(TwistdProcess):
    """``prometheus`` as a child process of the test, its output in ``prometheus.log``."""

    def __init__(self, log_dir: Path, config: Path, port: int) -> None:
        super().__init__("prometheus", [], log_dir, name="prometheus")
        self.data = log_dir / "prometheus-data"
        self.config = config
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def command(self) -> list[str]:
        """Prometheus with the test's config, storage and address."""
        return [
            prometheus_binary(),
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.data}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]


def get_json(url: str, timeout: float = 5.0) -> Any:
    """GET ``url`` and decode its JSON body (blocking; raises OSError when unreachable)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def prometheus_config(yellow_sd: str) -> str:
    """etc/prometheus.yml with the test's yellow and every interval 1 s."""
    text = EXAMPLE_CONFIG.read_text()
    assert "http://127.0.0.1:9555/sd" in text
    text = text.replace("http://127.0.0.1:9555/sd", yellow_sd)
    for key in ("scrape_interval", "scrape_timeout", "evaluation_interval", "refresh_interval"):
        text, n = re.subn(rf"(\b{key}:) *\S+", r"\1 1s", text)
        assert n, f"etc/prometheus.yml sets no {key}"
    return text


class Monitored:
    """The module's cluster and the Prometheus that scrapes it."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.processes: list[TwistdProcess] = []
        self.yellow = f"tcp://127.0.0.1:{free_port()}"
        self.yellow_ops = f"127.0.0.1:{free_port()}"
        self.sd_url = f"http://{self.yellow_ops}/sd"
        config = log_dir / "prometheus.yml"
        config.write_text(prometheus_config(self.sd_url))
        self.prometheus = PrometheusProcess(log_dir, config, free_port())

    def start_all(self) -> None:
        """Start the cluster, then Prometheus."""
        metrics = ("--metrics", "127.0.0.1:0")
        self.start("yellow", "mmo-yellow", "--listen", self.yellow, "--metrics", self.yellow_ops)
        member = ("--yellow", self.yellow, *metrics)
        for name in ECHOES:
            self.start(name, "mmo-worker", *member, "--handler", ECHO, "--instance-id", name)
        broker = f"tcp:{free_port()}:interface=127.0.0.1"
        self.start(
            "broker-1", "mmo-broker", *member, "--listen", broker, "--instance-id", "broker-1"
        )
        brokerlist = f"tcp:{free_port()}:interface=127.0.0.1"
        self.start("brokerlist-1", "mmo-brokerlist", *member, "--listen", brokerlist)
        self.processes.append(self.prometheus.start())

    def start(self, name: str, role: str, *args: str) -> None:
        """Start ``twistd -n role args`` named ``name`` (also its ``MMO_NAME``)."""
        self.processes.append(TwistdProcess(role, list(args), self.log_dir, name).start())

    def api(self, path: str, **params: Any) -> Any:
        """Prometheus' answer to ``GET /api/v1/<path>?params`` (its ``data``)."""
        query = urllib.parse.urlencode(params)
        reply = get_json(f"{self.prometheus.url}/api/v1/{path}?{query}")
        assert reply["status"] == "success", reply
        return reply["data"]

    def query(self, promql: str, **params: Any) -> list[dict[str, Any]]:
        """The result vector of an instant query."""
        data = self.api("query", query=promql, **params)
        assert data["resultType"] == "vector", data
        return data["result"]

    def logs(self) -> str:
        """The tail of every process's log."""
        return "\n".join(f"--- {p.name} ---\n{p.log_tail(30)}" for p in self.processes)

    def stop(self) -> None:
        """Stop Prometheus, then the cluster (only what this module started)."""
        for process in reversed(self.processes):
            process.stop(timeout=10)


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitored]:
    """The module's cluster and Prometheus, once every process is a target that is up."""
    prometheus_binary()
    cluster = Monitored(tmp_path_factory.mktemp("prometheus"))
    try:
        cluster.start_all()
        try:
            wait_until(lambda: targets_up(cluster), what="every process a target, up")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{cluster.logs()}") from None
        yield cluster
    finally:
        cluster.stop()


def discovered(sd: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(role, service, instance) of each target group the yellow's /sd lists."""
    return {
        (g["labels"]["role"], g["labels"]["mmo_service"], g["labels"]["mmo_instance"]) for g in sd
    }


def targets_up(cluster: Monitored) -> list[dict[str, Any]] | None:
    """Prometheus' active targets once it found and scraped every process of the cluster
    (the members and a yellow), all up; None until then."""
    try:
        active = cluster.api("targets", state="active")["activeTargets"]
    except OSError:
        return None  # Prometheus is still starting
    found = {(t["labels"].get("role"), t["health"]) for t in active}
    members = {
        (t["labels"]["role"], t["labels"]["mmo_service"], t["labels"]["mmo_instance"])
        for t in active
        if t["labels"].get("role") != "yellow"
    }
    if members != MEMBERS or ("yellow", "up") not in found or len(active) != len(MEMBERS) + 1:
        return None
    return active if all(t["health"] == "up" for t in active) else None


def test_the_yellow_lists_every_process_for_prometheus(monitored: Monitored) -> None:
    """The yellow's /sd lists each member at the address its registry entry publishes,
    and the yellow itself at its --metrics address."""
    sd = get_json(monitored.sd_url)
    yellows = [g for g in sd if g["labels"]["role"] == "yellow"]
    assert [g["targets"] for g in yellows] == [[monitored.yellow_ops]]
    assert discovered([g for g in sd if g not in yellows]) == MEMBERS
    for group in sd:
        (address,) = group["targets"]
        health = get_json(f"http://{address}/healthz")
        assert health["alive"] and health["role"] == group["labels"]["role"]


def test_every_process_is_a_target_that_is_up(monitored: Monitored) -> None:
    """Prometheus scrapes every live process of the cluster, labelled by role, service
    and instance, and each reports its own role and instance (no ``exported_`` labels)."""
    active = targets_up(monitored)
    assert active is not None, monitored.api("targets")
    assert all(t["scrapeUrl"].endswith("/metrics") for t in active)
    info = monitored.query("mmo_info")
    assert len(info) == len(MEMBERS) + 1
    for series in info:
        labels = series["metric"]
        assert not [name for name in labels if name.startswith("exported_")], labels
        assert labels["version"]
    instances = {(s["metric"]["role"], s["metric"]["mmo_instance"]) for s in info}
    assert {(role, instance) for role, _, instance in MEMBERS} < instances


@pytest_twisted.inlineCallbacks
def test_prometheus_counts_exactly_the_requests_sent(
    monitored: Monitored, directory_factory: Any
) -> Any:
    """Calls sent at a steady rate show in PromQL at about that rate, and the workers'
    counters, summed by Prometheus, are exactly the number of calls."""
    directory = directory_factory([monitored.yellow])
    yield wait_instances(directory, "echo", set(ECHOES))
    yield wait_links(directory, "echo", set(ECHOES))
    echo = directory.get_service("echo")
    total = RATE * SECONDS
    answered: list[float] = []  # when each call was answered (Prometheus' clock)
    started = reactor.seconds()
    for n in range(total):
        assert (yield echo.echo(n=n)) == {"n": n}
        answered.append(time.time())
        # Paced from the start, so that a slow call does not slow the whole load down.
        yield sleep(max(0.0, started + (n + 1) / RATE - reactor.seconds()))
    ended = answered[-1]
    sent = 'mmo_server_request_duration_seconds_count{service="echo",method="echo"}'

    def scraped() -> Any:
        return threads.deferToThread(monitored.query, f"sum({sent})")

    def counted(result: list[dict[str, Any]]) -> bool:
        value = float(result[0]["value"][1]) if result else 0.0
        assert value <= total, f"Prometheus counts {value} requests, {total} were sent"
        return value == total

    yield until(lambda: scraped().addCallback(counted), what=f"{total} requests counted")
    by_labels = yield threads.deferToThread(
        monitored.query, f"sum by (role, mmo_service, outcome) ({sent})"
    )
    assert [(s["metric"], s["value"][1]) for s in by_labels] == [
        ({"role": "worker", "mmo_service": "echo", "outcome": "ok"}, str(total))
    ]
    # The rate over the last 5 s of the load (all inside it), against the calls answered
    # then: Prometheus sees them through 1 s scrapes, so within a factor.
    rate = yield threads.deferToThread(
        monitored.query, f"sum(rate({sent}[5s]))", time=f"{ended:.3f}"
    )
    assert rate, "no rate at the end of the load"
    measured = float(rate[0]["value"][1])
    expected = sum(1 for t in answered if t > ended - 5) / 5
    assert expected / 2 <= measured <= expected * 2, f"{measured:.1f}/s, sent {expected:.1f}/s"


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of the Grafana dashboard."""
    model = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in model["panels"]
        for target in panel.get("targets", [])
    ]


def test_the_dashboards_queries_run(monitored: Monitored) -> None:
    """Every query of etc/grafana/mmo.json is PromQL that this Prometheus evaluates (with
    Grafana's variables filled in), and the per-role panels see every role."""
    for title, expr in dashboard_queries():
        promql = expr.replace("$__rate_interval", "5s").replace("$service", ".*")
        assert "$" not in promql, (title, promql)
        monitored.query(promql)  # status "success", or the assertion names the reply
    memory = monitored.query('sum by (role) (process_resident_memory_bytes{role!=""})')
    assert {s["metric"]["role"] for s in memory} == {"yellow", "worker", "broker", "brokerlist"}
    registry = monitored.query('max by (service) (mmo_registry_instances{role="yellow"})')
    counts = {s["metric"]["service"]: s["value"][1] for s in registry}
    assert counts == {"echo": "2", "broker": "1", "brokerlist": "1"}


def test_the_example_config_is_valid() -> None:
    """etc/prometheus.yml passes promtool's check."""
    promtool = Path(prometheus_binary()).with_name("promtool")
    result = subprocess.run(
        [str(promtool), "check", "config", str(EXAMPLE_CONFIG)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
