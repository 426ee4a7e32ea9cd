"""Label values a client chooses, bounded.

Every distinct label value is a series that lives until the process ends
(in multiprocess mode: until its files are removed). A model name, a tool
name or an SDK's user agent is whatever a client sends, so each is passed
through a ``BoundedLabels``: the first ``cap`` distinct values keep their own
series, every later one is counted under ``other``. Values longer than
``MAX_LABEL_LENGTH`` are ``other`` too (no real model name is that long).

The fold is idempotent (``fold(fold(x)) == fold(x)``), so a value can be
folded once by a caller (the circuit breaker's key) and again by the metric.
"""

from __future__ import annotations

OTHER = "other"
MAX_LABEL_LENGTH = 200
# HTTP methods a passthrough route may see; any other is "other".
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class BoundedLabels:
    """The first ``cap`` distinct values are kept; later ones fold into ``other``.

    The empty string (no model given) and ``other`` itself always map to
    themselves and do not count against the cap.
    """

    __slots__ = ("_seen", "cap", "folded")

    def __init__(self, cap: int) -> None:
        if cap < 0:
            raise ValueError("a label cap cannot be negative")
        self.cap = cap
        self.folded = 0  # values counted under "other" (for tests and debugging)
        self._seen: set[str] = set()

    def fold(self, value: str) -> str:
        if not value or value == OTHER or value in self._seen:
            return value
        if len(self._seen) < self.cap and len(value) <= MAX_LABEL_LENGTH:
            self._seen.add(value)
            return value
        self.folded += 1
        return OTHER

    def __len__(self) -> int:
        return len(self._seen)


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else OTHER
