"""The management database: SQLAlchemy models, the store that opens and
migrates it, its change notifications, the secret key.

Belongs here: the schema (:mod:`.models`, migrations in ``migrations/``),
:class:`~.database.Store` with its read and write transactions
(:mod:`.database`), PostgreSQL LISTEN/NOTIFY of directory changes
(:mod:`.notify`).  May import: ``gateway.config``.
"""
