"""Prices and cost: the price book (``book``, sans-io), its table in PostgreSQL
and the default book shipped with the package (``store``).

See docs/cost.md.
"""
