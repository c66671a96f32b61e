"""The ``sipgw`` command, a thin front end over ``gateway.manage`` and the
gateway's application.

Belongs here: the command line's words, settings and exit statuses
(:mod:`.parser`), ``sipgw serve`` (:mod:`.serve`), the management commands
and the entry point :func:`main` (:mod:`.commands`), and what they print for
people (:mod:`.output`).

May import everything below it.
"""

from gateway.cli.commands import main

__all__ = ["main"]
