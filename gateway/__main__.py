"""``python -m gateway``: the same as the ``sipgw`` command."""

from gateway.cli.commands import main

raise SystemExit(main())
