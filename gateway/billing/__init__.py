"""Money and records of calls: rating and the credit meter
(:mod:`.credit`), the call records and their batched writer (:mod:`.cdr`).

May import: ``gateway.store``, ``gateway.config``.
"""
