"""mmo: the server side of online games as many small cooperating Twisted processes."""

from typing import Any


def __getattr__(name: str) -> Any:
    """``__version__``, read from the installed package's metadata on first use: every
    process imports this package, and reading the metadata costs tens of milliseconds."""
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import metadata

    try:
        version = metadata.version("mmo")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        version = "0.0.0+unknown"
    globals()["__version__"] = version
    return version
