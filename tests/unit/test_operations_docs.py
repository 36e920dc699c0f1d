"""docs/operations.md lists every metric mmo exports, and only those."""

from __future__ import annotations

import re
from pathlib import Path

from mmo.broker import metrics as broker_metrics

ROOT = Path(__file__).resolve().parents[2]
# A metric family's name where the code makes one: counter("mmo_..."), gauge(...),
# Latencies(...) (the name is the first argument, on its line or the next).
MADE = re.compile(r"(?:counter|gauge|Latencies)\(\s*\"(mmo_[a-z_]+)\"")


def exported() -> set[str]:
    names = set()
    for path in (ROOT / "mmo").rglob("*.py"):
        names.update(MADE.findall(path.read_text()))
    names.update(f"mmo_broker_{family}" for family in broker_metrics._HELP)
    return names


def documented() -> set[str]:
    text = (ROOT / "docs" / "operations.md").read_text()
    rows = re.findall(r"^\| `(mmo_[a-z_]+)` \|", text, re.MULTILINE)
    return {re.sub(r"_total$", "", name) for name in rows}


def test_every_metric_is_documented_and_every_documented_one_exists() -> None:
    made, listed = exported(), documented()
    assert len(made) > 40
    assert made - listed == set(), "exported but not in docs/operations.md"
    assert listed - made == set(), "in docs/operations.md but not exported"
