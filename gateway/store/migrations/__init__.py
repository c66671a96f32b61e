"""Alembic migrations of the gateway's store, run by :mod:`gateway.store.database`
itself when the store is opened (no ``alembic.ini``): ``env.py`` takes the
connection the store hands it in ``config.attributes["connection"]``."""
