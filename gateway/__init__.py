"""The SIP trunk gateway application: settings, the SIP endpoint, the HTTP
side and the command line (see DESIGN.md for the whole map)."""

from __future__ import annotations

from importlib import metadata

__all__ = ["__version__"]

try:
    __version__ = metadata.version("sipgw")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
