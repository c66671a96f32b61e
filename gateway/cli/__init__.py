"""The ``sipgw`` command (:mod:`.commands`): ``serve`` and the management
commands, a thin front end over ``gateway.manage``.

May import everything below it.
"""
