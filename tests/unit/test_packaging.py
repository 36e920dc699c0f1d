"""The packaging checks: the wheel check names what is missing, and every floor is explicit."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
FILES = {
    "mmo/__init__.py": b'"""mmo."""\n',
    "mmo/data/migrations/0001_accounts.sql": b"CREATE TABLE accounts (id TEXT);\n",
    "twisted/plugins/mmo_plugins.py": b'"""plugins."""\n',
}
METADATA = "Metadata-Version: 2.4\nName: mmo\nVersion: 0.1.0\nLicense-Expression: MIT\n"


def load(script: str) -> ModuleType:
    """A script of scripts/ (no .py suffix) loaded as a module, without running it."""
    loader = importlib.machinery.SourceFileLoader(script.replace("-", "_"), str(SCRIPTS / script))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def check_package() -> ModuleType:
    """scripts/check-package as a module."""
    return load("check-package")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A source tree holding FILES, as check-package copies it for the build."""
    for name, data in FILES.items():
        (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / name).write_bytes(data)
    return tmp_path / "src"


def wheel(path: Path, files: dict[str, bytes], metadata: str = METADATA) -> Path:
    """Write a wheel holding ``files`` and a METADATA."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr("mmo-0.1.0.dist-info/METADATA", metadata)
        archive.writestr("mmo-0.1.0.dist-info/RECORD", "")
    return path


def test_a_wheel_with_every_tracked_file_passes(
    check_package: ModuleType, source: Path, tmp_path: Path
) -> None:
    """A wheel holding every tracked file of mmo/ and twisted/plugins/ passes; others are moot."""
    built = wheel(tmp_path / "mmo.whl", FILES)
    assert check_package.check_wheel(built, [*FILES, "tests/test_x.py"], source) == len(FILES)


def test_missing_migrations_are_named(
    check_package: ModuleType, source: Path, tmp_path: Path
) -> None:
    """A wheel without the .sql files (the bug users met) fails, naming each missing file."""
    shipped = {n: d for n, d in FILES.items() if not n.endswith(".sql")}
    built = wheel(tmp_path / "mmo.whl", shipped)
    with pytest.raises(check_package.CheckFailed, match=r"missing .*\n +mmo/data/migrations/0001"):
        check_package.check_wheel(built, list(FILES), source)


def test_stale_and_untracked_files_are_named(
    check_package: ModuleType, source: Path, tmp_path: Path
) -> None:
    """A file unlike its source, or one git does not track (a dropin.cache), fails by name."""
    shipped = {**FILES, "mmo/__init__.py": b"old\n", "twisted/plugins/dropin.cache": b"x"}
    built = wheel(tmp_path / "mmo.whl", shipped)
    with pytest.raises(check_package.CheckFailed) as info:
        check_package.check_wheel(built, list(FILES), source)
    assert "not as in the source:\n    mmo/__init__.py" in str(info.value)
    assert "not tracked by git:\n    twisted/plugins/dropin.cache" in str(info.value)


def test_the_license_must_be_an_spdx_expression(
    check_package: ModuleType, source: Path, tmp_path: Path
) -> None:
    """A wheel whose metadata lacks ``License-Expression: MIT`` fails."""
    built = wheel(tmp_path / "mmo.whl", FILES, METADATA.replace("License-Expression", "License"))
    with pytest.raises(check_package.CheckFailed, match="License-Expression: MIT"):
        check_package.check_wheel(built, list(FILES), source)


def test_every_requirement_has_a_floor(tmp_path: Path) -> None:
    """check-lowest reads one '>=' floor per requirement, and refuses one without."""
    check_lowest = load("check-lowest")
    floors = check_lowest.floors(SCRIPTS.parent / "pyproject.toml")
    assert {"twisted", "thrift", "txredisapi", "pytest"} <= floors.keys()
    bare = tmp_path / "pyproject.toml"
    bare.write_text(
        '[project]\ndependencies = ["twisted>=25.5", "thrift"]\n'
        '[project.optional-dependencies]\ntest = ["pytest>=8"]\n'
    )
    with pytest.raises(check_lowest.CheckFailed, match=r"'thrift' .* needs one '>=' floor"):
        check_lowest.floors(bare)
