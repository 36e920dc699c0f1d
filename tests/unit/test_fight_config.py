"""mmo-fight's options and config (bad values are usage errors naming the key), the fight
processes' command line, and the `mmo fights` table."""

from __future__ import annotations

import pytest
from twisted.python import usage

from mmo.cli import build_parser
from mmo.cli.fights import render
from mmo.fight.config import FightConfig
from mmo.fight.spawner import ProcessSpawner, describe_exit
from mmo.fight.tap import Options

YELLOW = "tcp://127.0.0.1:5555"
HANDLER = "mmo.examples.fight:TurnFight"


def parse(*args: str) -> Options:
    """Parse mmo-fight options."""
    options = Options()
    options.parseOptions(list(args))
    return options


def test_options_build_the_config():
    """Command-line options land in the config with their types; worker args are collected."""
    options = parse(
        "--yellow", YELLOW, "--handler", HANDLER, "--cap", "10", "--min-spare", "2",
        "--max-processes", "5", "--idle-timeout", "7.5", "--reservation-timeout", "3",
        "--worker-arg", "--drain-timeout", "--worker-arg", "4",
    )  # fmt: skip
    config = options.config
    assert (config.cap, config.min_spare, config.max_processes) == (10, 2, 5)
    assert (config.idle_timeout, config.reservation_timeout) == (7.5, 3.0)
    assert config.worker_args == ("--drain-timeout", "4")
    assert config.service == "fight" and config.worker_service == "fight-worker"


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["--cap", "0"], "cap"),
        (["--cap", "ten"], "cap"),
        (["--cap", "4", "--min-spare", "9", "--max-processes", "3"], "min-spare"),
        (["--cap", "4", "--idle-timeout", "0"], "idle-timeout"),
        (["--cap", "4", "--service", "fight-worker"], "worker-service"),
    ],
)
def test_bad_values_are_usage_errors_naming_the_key(args, key):
    """Each bad value is a UsageError that names its key."""
    with pytest.raises(usage.UsageError, match=key):
        parse("--yellow", YELLOW, "--handler", HANDLER, *args)


def test_the_handler_must_be_a_fight_handler():
    """A handler that is not a FightHandler is refused before anything starts."""
    with pytest.raises(usage.UsageError, match="FightHandler"):
        parse("--yellow", YELLOW, "--handler", "mmo.examples.echo:EchoService", "--cap", "2")
    with pytest.raises(usage.UsageError, match="cannot import"):
        parse("--yellow", YELLOW, "--handler", "no.such.module:X", "--cap", "2")


def test_fight_processes_run_mmo_worker_in_their_own_session_without_a_shell():
    """Each fight process is `twistd -n mmo-worker` with its instance id, exec'd in a new
    session with no parent-death signal (it outlives a crashed dispatcher, to be adopted)."""
    config = FightConfig(yellow=(YELLOW,), handler=HANDLER, cap=3, worker_args=("--x", "y"))
    argv = ProcessSpawner(config, "fight-dispatcher").argv("fight-7")
    assert argv[1] == "-c" and "os.setsid()" in argv[2] and "prctl" not in argv[2]
    assert "mmo.process.launch" not in argv
    tail = argv[argv.index("mmo-worker") :]
    assert tail[tail.index("--instance-id") + 1] == "fight-7"
    assert tail[tail.index("--service") + 1] == "fight-worker"
    assert tail[tail.index("--handler") + 1] == HANDLER
    assert tail[-2:] == ["--x", "y"]


def test_exit_descriptions():
    """processEnded reasons read as 'killed by signal N' or 'exited with code N'."""
    from twisted.internet.error import ProcessTerminated
    from twisted.python.failure import Failure

    assert describe_exit(Failure(ProcessTerminated(signal=9))) == "was killed by signal 9"
    assert describe_exit(Failure(ProcessTerminated(exitCode=3))) == "exited with code 3"


def test_mmo_fights_is_a_subcommand():
    """`mmo fights --json` parses with the dispatcher's service name defaulting to fight."""
    args = build_parser().parse_args(["fights", "--yellow", YELLOW, "--json"])
    assert args.json and args.service == "fight" and args.yellow == YELLOW


def test_render_shows_every_process():
    """The table has one line per process with its state and load against the cap."""
    status = {
        "instance": "fight",
        "cap": 10,
        "min_spare": 1,
        "max_processes": 4,
        "draining": False,
        "fights": 3,
        "players": 6,
        "waiting": 0,
        "counts": {"spawned": 2},
        "processes": [
            {"instance": "fight-1", "pid": 11, "state": "ready", "load": 6, "fights": 3,
             "peak": 8, "idle": None, "room": 4, "age": 9.0},
            {"instance": "fight-2", "pid": 12, "state": "starting", "load": 0, "fights": 0,
             "peak": 0, "idle": None, "room": 10, "age": 0.2},
        ],
    }  # fmt: skip
    text = render(status)
    assert "cap 10" in text and "spawned=2" in text
    line = next(row for row in text.splitlines() if row.startswith("fight-1"))
    assert "ready" in line and "6/10" in line
    assert any(row.startswith("fight-2") and "starting" in row for row in text.splitlines())
