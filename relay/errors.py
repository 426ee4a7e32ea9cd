"""Errors at the CLI and server boundary."""

from __future__ import annotations


def sole_exception(exc: BaseException) -> BaseException:
    """``exc`` out of the exception groups trio's nurseries wrap it in (one level each).

    A group of several stays a group: there is no single cause to report.
    """
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
