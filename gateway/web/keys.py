"""The typed keys of the gateway's aiohttp application (``web.AppKey``).

They live apart from :mod:`gateway.web.app`, which fills them in, so that
what reads them (the REST API in :mod:`gateway.web.api.routes`, ``sipgw
serve``) imports this module and not the app: the app imports the API, and
the API importing the app back was a cycle.

``SIP_SERVICE`` stays in :mod:`gateway.web.app`, which builds its
:class:`~gateway.proxy.service.SIPService`; nothing else reads it.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from admission import AdmissionController
from gateway.billing.cdr import CallRecordWriter
from gateway.config.settings import GatewaySettings
from gateway.manage.nodes import NodeAnnouncer
from gateway.proxy.router import CallRouter
from gateway.store.database import Store
from gateway.web.metrics import Metrics
from sip.transport import TransportLayer

__all__ = [
    "ADMISSION",
    "CALL_RECORDS",
    "DIRECTORY_REFRESH",
    "METRICS",
    "NODE",
    "ROUTER",
    "SETTINGS",
    "SIP_TRANSPORT",
    "STORE",
]

SETTINGS = web.AppKey("settings", GatewaySettings)
STORE = web.AppKey("store", Store)
SIP_TRANSPORT = web.AppKey("sip_transport", TransportLayer)
ROUTER = web.AppKey("router", CallRouter)
ADMISSION = web.AppKey("admission", AdmissionController)
METRICS = web.AppKey("metrics", Metrics)
#: Set it after a change to profiles, numbers, credit or rates: the
#: directory is reloaded at once instead of at the next poll.
DIRECTORY_REFRESH = web.AppKey("directory_refresh", asyncio.Event)
CALL_RECORDS = web.AppKey("call_records", CallRecordWriter)
#: This node's entry among the running gateways (:mod:`gateway.manage.nodes`).
NODE = web.AppKey("node", NodeAnnouncer)
