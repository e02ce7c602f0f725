"""The installed package's version, read once from its metadata when first asked for."""

from __future__ import annotations

import functools

__all__ = ["package_version"]


@functools.cache
def package_version() -> str:
    """mcp-locks' version (``0.0.0`` when run from a source tree that was never installed).

    ``importlib.metadata`` costs ~25 ms to import, so only a caller that asks for the version pays it.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mcp-locks")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"
