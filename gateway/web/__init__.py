"""The HTTP side and the wiring: the aiohttp application that runs the
gateway (:mod:`.app`: resources, AppKeys, ``/healthz``, ``/metrics``), the
Prometheus metrics (:mod:`.metrics`) and the REST API (:mod:`.api`).

May import everything below it.
"""
