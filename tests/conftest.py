"""The fixtures every test may use; they live in :mod:`tests.support.harness`
with the rest of the harness, and are made visible to ``tests/unit`` and
``tests/e2e`` here."""

from tests.support.harness import (  # noqa: F401  (fixtures, found by name)
    gateway_home,
    loopback_address,
    module_gateway,
    serve_gateway,
    sipp,
)
