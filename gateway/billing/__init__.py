"""Money and records of calls: rating and the credit meter
(:mod:`.credit`), the credit guard that times each profile's credit
cut-off and applies other nodes' spending (:mod:`.guard`), the call records
and their batched writer (:mod:`.cdr`).

May import: ``gateway.store``, ``gateway.config``.
"""
