"""mmo: the server side of online games as many small cooperating Twisted processes."""

from importlib import metadata

try:
    __version__ = metadata.version("mmo")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0.0.0+unknown"
