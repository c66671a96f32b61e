"""What the nodes of a cluster exchange: today the profiles' credit spent
(:mod:`.credit_share`).

May import: ``gateway.billing``, ``gateway.config``.
"""
