"""Spend budgets: per user, per group of users or per relay token, per calendar
period, on every model or one, checked before a request goes upstream.

``tracker``: the in-memory running totals a request is checked against (no
query per request); ``store``: groups, budgets and the spend totals in
PostgreSQL, and the service that keeps a tracker current. See
docs/cost.md.
"""
