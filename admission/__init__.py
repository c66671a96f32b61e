"""The admission controller: per-profile channel limits (see DESIGN.md).

The interface (``acquire``/``release`` with typed ``Admitted``/``Rejected``
results) and its memory and Redis backends arrive with the registrar and
proxy (issues 3 and 4); this package holds the place the design card gives it.
"""

__all__: list[str] = []
