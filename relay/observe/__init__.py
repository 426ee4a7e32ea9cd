"""Observability: request ids (``context``), structured logs (``logs``), traces (``tracing``).

See docs/observability.md. ``context`` and ``tracing`` import nothing of the
relay above them; OpenTelemetry is imported only when tracing is on.
"""
