"""A stand-in for systemd in the tests of ``mmo reload --restart``: the test process holds
the workers (:class:`~mmo.testing.TwistdProcess`) as units, and a small command restarts
one as ``systemctl restart UNIT`` does (stop it with SIGTERM, wait for it to end, start it
again with the same role, arguments and environment, then return):

    python tests/integration/units.py SOCKET INSTANCE

It exits 0 once the unit is restarted, 1 with the reason on stderr otherwise (no such unit).
"""

from __future__ import annotations

import socket
import socketserver
import sys
import threading
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()


class Units:
    """Units by name, restarted on request over a Unix socket (in a thread of its own).

    Args:
        directory: where the socket goes.
    """

    def __init__(self, directory: Path) -> None:
        from mmo.testing import TwistdProcess

        self.units: dict[str, TwistdProcess] = {}
        self.restarts: list[str] = []
        self.path = directory / "units.sock"
        units = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                name = self.rfile.readline().decode().strip()
                self.wfile.write(units.restart(name).encode() + b"\n")

        self.server = socketserver.ThreadingUnixStreamServer(str(self.path), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def command(self) -> str:
        """The restart command, ``{instance}`` for the unit's name."""
        return f"{sys.executable} {HERE} {self.path} {{instance}}"

    def add(self, process: Any) -> Any:
        """Start ``process`` (a TwistdProcess) as the unit of its name."""
        self.units[process.name] = process.start()
        return process

    def restart(self, name: str) -> str:
        """Stop unit ``name`` and start it again: ``ok``, or why not."""
        from mmo.testing import TwistdProcess

        old = self.units.get(name)
        if old is None:
            return f"Unit {name} not found."
        old.stop(timeout=30)
        self.units[name] = TwistdProcess(old.role, old.args, old.log_path.parent, name, old.env)
        self.units[name].start()
        self.restarts.append(name)
        return "ok"

    def stop(self) -> None:
        """Stop every unit, then the socket."""
        for process in self.units.values():
            process.stop(timeout=10)
        self.server.shutdown()
        self.server.server_close()


def main(argv: list[str]) -> int:
    """``units.py SOCKET NAME``: restart unit NAME; 0 when done."""
    path, name = argv
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(60)
        client.connect(path)
        client.sendall(name.encode() + b"\n")
        answer = client.makefile().readline().strip()
    if answer != "ok":
        print(answer, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
