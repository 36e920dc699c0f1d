"""What scripts/check-package and scripts/check-lowest share: running a command that may
not outlive the check, and a copy of the files git tracks."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class CheckFailed(Exception):
    """A check failed; the message says what is wrong."""


def stop_group(proc: subprocess.Popen[str]) -> None:
    """Stop ``proc`` and what it started (it leads its own process group): SIGTERM, then
    SIGKILL whatever is left after a grace period."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run(
    argv: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    timeout: float,
    what: str,
    capture: bool = True,
) -> str:
    """Run ``argv`` (never through a shell); return its output (``capture``; else it goes
    to ours and this returns ""), or fail showing it.

    The command runs in a process group of its own, stopped as a whole on a timeout or an
    interrupt, so that no child of it (the demo's cluster) outlives the check.

    Raises:
        CheckFailed: the command exited non-zero or timed out.
    """
    pipe = subprocess.PIPE if capture else None
    with subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdout=pipe,
        stderr=subprocess.STDOUT if capture else None,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_group(proc)
            try:
                output, _ = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                output = "(its output stayed open)"
            raise CheckFailed(f"{what}: no answer within {timeout:.0f} s\n{output or ''}") from None
        except BaseException:
            stop_group(proc)
            raise
    if proc.returncode != 0:
        raise CheckFailed(f"{what}: exit status {proc.returncode}\n{output or ''}")
    return output or ""


def tracked_files() -> list[str]:
    """The files a commit of the working tree would hold (tracked or new, not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        check=True,
    ).stdout.decode()
    return sorted({name for name in listed.split("\0") if name and (ROOT / name).is_file()})


def copy_tree(files: list[str], dest: Path) -> None:
    """Copy ``files`` (relative to the checkout) into ``dest``, keeping their paths."""
    for name in files:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
