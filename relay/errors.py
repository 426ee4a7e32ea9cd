"""Errors at the CLI and server boundary: one tree, each a one-line message.

``relay`` (``relay.cli.main``) catches ``RelayError`` once: it prints
``relay: <report()>`` and exits with the class's ``exit_code``. Anything
else that reaches it is a bug and keeps its traceback.

::

    RelayError                      exit 1
    ├── ConfigurationError          exit 2: an option or the environment's providers
    │                                (relay.options.OptionError, relay.providers.env.ProviderConfigError)
    ├── StartupError                the relay cannot start
    │   ├── ListenError             an address cannot be listened on (main or metrics listener)
    │   ├── DatabaseConnectError    relay.db.bridge: the database cannot be reached or refuses
    │   ├── DatabaseUnavailable     the database went away (an admin command, the start)
    │   ├── EmbeddedPostgresError   relay.db.embedded
    │   ├── MigrationError          relay.db.migrate
    │   └── BedrockConfigError      relay.upstream.aws: a bedrock provider cannot work
    ├── ServiceFailure              a background service failed while serving
    └── CommandError                an admin command cannot be done
        ├── AuthError               relay.auth (unknown user, name taken, ...)
        └── ProviderStoreError      relay.providers.store

This module is a leaf: every layer may import it.
"""

from __future__ import annotations

import errno
import socket
from typing import ClassVar


class RelayError(Exception):
    """A failure reported in one line (``report``), without a traceback."""

    exit_code: ClassVar[int] = 1

    def report(self) -> str:
        """What ``relay`` prints after ``relay: ``."""
        return str(self)


class ConfigurationError(RelayError):
    """The relay's configuration cannot be used; nothing was started."""

    exit_code: ClassVar[int] = 2

    def report(self) -> str:
        text = str(self)
        # One problem, one line; several (provider configuration), one line each.
        sep = " " if "\n" not in text else "\n  "
        return "configuration error:" + sep + text.replace("\n", "\n  ")


class StartupError(RelayError):
    """The relay cannot start (a service it needs is missing or refuses)."""


class ListenError(StartupError):
    """The relay cannot listen on an address; the message names the address and why."""


class DatabaseUnavailable(StartupError):
    """The database went away (connection lost, server shut down) during a command."""


class ServiceFailure(RelayError):
    """A background service failed while the relay was serving; it shut down (exit status 1)."""

    def report(self) -> str:
        return f"stopped: {self}"


class CommandError(RelayError):
    """An admin command that cannot be done, with exit status 1."""


def bind_failure(exc: OSError) -> str:
    """Why an address cannot be listened on, in a few words."""
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror or exc})"
    if exc.errno == errno.EADDRINUSE:
        return "the address is already in use (another relay, or another program, listens there)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "no network interface of this machine has that address"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    return exc.strerror or str(exc)


def listen_error(address: str, exc: OSError, what: str = "") -> ListenError:
    """The ``ListenError`` for a failed bind of ``address`` (``what``: which listener)."""
    where = f"{address} ({what})" if what else address
    return ListenError(f"cannot listen on {where}: {bind_failure(exc)}")


def sole_exception(exc: BaseException) -> BaseException:
    """``exc`` out of the exception groups trio's nurseries wrap it in (one level each).

    A group of several stays a group: there is no single cause to report.
    """
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def relay_error(exc: BaseException) -> RelayError | None:
    """The ``RelayError`` that ``exc`` is (out of exception groups), or None."""
    found = sole_exception(exc)
    return found if isinstance(found, RelayError) else None
