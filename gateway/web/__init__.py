"""The HTTP side and the wiring: the aiohttp application that runs the
gateway (:mod:`.app`: resources, ``/healthz``, ``/metrics``), its typed
keys (:mod:`.keys`), the profile directory read from the store and kept
current for the call path (:mod:`.directory`), the Prometheus metrics
(:mod:`.metrics`) and the REST API (:mod:`.api`).

May import everything below it.
"""
