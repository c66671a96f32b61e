"""``python -m gateway``: the same as the ``sipgw`` command."""

from gateway.cli import main

raise SystemExit(main())
