"""The REST API under ``/api/v1``: routes (:mod:`.routes`) and its OpenAPI
document (:mod:`.openapi`).  A thin front end over ``gateway.manage``.
"""
