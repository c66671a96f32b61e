"""The SIP-facing call path: the SIP service, the asyncio adapter between
the transport and the sans-I/O core, with the transaction timer and the
registrations' expiry timer (:mod:`.service`); the call router (identify,
admit, route, release: :mod:`.router`); a call's life as a state enum and
its transition table (:mod:`.call`); who a request is from, as a typed
answer (a profile, the carrier, or a refusal with its SIP status:
:mod:`.identify`); in-dialog routing and the gateway's own BYEs
(:mod:`.dialog`); the gateway's own address in what it sends, and which
URIs and Vias are its own (:mod:`.own`); the in-memory profile directory the router reads
(:mod:`.directory`) and the registrar's location service
(:mod:`.registrar`).

The call path reads only the directory, never the store.  May import:
``sip``, ``admission``, ``gateway.billing``, ``gateway.cluster``,
``gateway.config``.
"""
