"""The ``sipgw`` command.

``sipgw serve`` runs the gateway until SIGINT or SIGTERM.  Settings come from
``--config`` (default ``config/gateway.toml`` in the working directory if it
exists, else the built-in defaults); ``--sip-listen``, ``--http-listen`` and
``--log-level`` override the file.  Problems an operator can fix (a bad
setting, an address in use) end the command with one line on stderr and a
non-zero status, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from aiohttp import web

from gateway import __version__
from gateway.app import SIP_TRANSPORT, create_app
from gateway.settings import (
    LOG_LEVELS,
    ConfigError,
    GatewaySettings,
    HostPort,
    load_settings,
    parse_host_port,
)
from sip.transport import event_loop_factory

__all__ = ["DEFAULT_CONFIG", "EXIT_CONFIG", "EXIT_RUNTIME", "build_parser", "main"]

logger = logging.getLogger("gateway")

DEFAULT_CONFIG = Path("config/gateway.toml")
EXIT_RUNTIME = 1  # could not start (address in use, ...)
EXIT_CONFIG = 2  # bad command line or configuration (argparse uses 2 as well)
EXIT_INTERRUPTED = 130  # interrupted before the signal handlers were in place


class _StartError(Exception):
    """A problem already phrased for the operator."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _address(key: str) -> Callable[[str], HostPort]:
    def convert(text: str) -> HostPort:
        try:
            return parse_host_port(text, key)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(exc.problem) from None

    convert.__name__ = "HOST:PORT"
    return convert


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sipgw", description="SIP trunk gateway: registrar and stateful proxy."
    )
    parser.add_argument("--version", action="version", version=f"sipgw {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the gateway until SIGINT/SIGTERM")
    serve.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        help=f"TOML settings file (default: {DEFAULT_CONFIG} if it exists, else built-in)",
    )
    serve.add_argument(
        "--sip-listen",
        action="append",
        type=_address("--sip-listen"),
        metavar="HOST:PORT",
        help="SIP address for UDP and TCP (repeatable; replaces sip.listen)",
    )
    serve.add_argument(
        "--http-listen",
        type=_address("--http-listen"),
        metavar="HOST:PORT",
        help="HTTP address for /healthz (replaces http.listen)",
    )
    serve.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        metavar="LEVEL",
        help=f"one of {', '.join(LOG_LEVELS)} (replaces log.level)",
    )
    return parser


def _settings(args: argparse.Namespace) -> GatewaySettings:
    path: Path | None = args.config
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    try:
        settings = load_settings(path) if path is not None else GatewaySettings()
        return settings.with_overrides(
            sip_listen=args.sip_listen, http_listen=args.http_listen, log_level=args.log_level
        )
    except ConfigError as exc:
        raise _StartError(str(exc), EXIT_CONFIG) from None


def _why(exc: OSError) -> str:
    if exc.strerror and exc.strerror.startswith("cannot"):
        return exc.strerror  # already phrased by sip.transport
    return exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc))


async def serve(settings: GatewaySettings) -> int:
    """Run until SIGINT/SIGTERM; return the exit status."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(create_app(settings), access_log=None, shutdown_timeout=5.0)
    try:
        try:
            await runner.setup()  # binds the SIP listeners (cleanup_ctx)
        except OSError as exc:
            raise _StartError(_why(exc), EXIT_RUNTIME) from None
        http = settings.http.listen
        site = web.TCPSite(runner, http.host, http.port)
        try:
            await site.start()
        except OSError as exc:
            message = f"cannot listen for HTTP on {http}: {_why(exc)}"
            raise _StartError(message, EXIT_RUNTIME) from None
        sip = ", ".join(str(a) for a in runner.app[SIP_TRANSPORT].listeners)
        logger.info("sipgw %s serving SIP on %s, HTTP on %s", __version__, sip, http)
        await stop.wait()
        logger.info("shutting down")
    finally:
        await runner.cleanup()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sipgw`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "serve":
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    try:
        settings = _settings(args)
        logging.basicConfig(
            level=settings.log.level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            return runner.run(serve(settings))
    except _StartError as exc:
        sys.stderr.write(f"sipgw: {exc}\n")
        return exc.status
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
