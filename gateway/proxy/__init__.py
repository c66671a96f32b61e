"""The SIP-facing call path: the SIP service, the asyncio adapter between
the transport and the sans-I/O core, with the transaction timer and the
registrations' expiry timer (:mod:`.service`), the call router (identify,
admit, route, release: :mod:`.router`), the in-memory profile directory it reads
(:mod:`.directory`) and the registrar's location service
(:mod:`.registrar`).

The call path reads only the directory, never the store.  May import:
``sip``, ``admission``, ``gateway.billing``, ``gateway.cluster``,
``gateway.config``.
"""
