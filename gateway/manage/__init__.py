"""The management service layer: the rules of accounts, profiles, numbers,
credit moves, rates, call history, API tokens, the credentials e-mail, and
the running nodes' addresses.

Every front end (the CLI, the REST API) calls these functions and nothing
else, so that no rule is written twice.  Refusals are
:class:`~.errors.ProfileError` subclasses carrying their answer.  May
import: ``gateway.store``, ``gateway.config``.
"""
