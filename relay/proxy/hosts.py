"""Which hosts the proxy decrypts, and for which provider.

The host of every enabled provider's base URL, plus the well-known hosts of
the APIs the relay speaks, each mapped to the provider named after its type
(``api.anthropic.com`` → the provider named ``anthropic``) when one exists.
Two providers claiming one host: the first by name wins, and a warning names
the others. A ``HostMap`` is never changed, only replaced: the proxy builds a
new one when the provider registry's snapshot changes (the same NOTIFY path
that reloads it), and a decrypted tunnel keeps the provider it was opened for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import urlsplit

from relay.providers.types import Provider

# Each well-known host and the provider type (hence name) it is mapped to.
WELL_KNOWN_HOSTS: Mapping[str, str] = MappingProxyType(
    {
        "api.anthropic.com": "anthropic",
        "api.openai.com": "openai",
        "api.individual.githubcopilot.com": "copilot",
        "api.business.githubcopilot.com": "copilot",
        "api.enterprise.githubcopilot.com": "copilot",
    }
)


def url_host(url: str) -> str | None:
    """The host of a base URL, lowercased and without a trailing dot (None if it has none)."""
    try:
        host = urlsplit(url.strip()).hostname
    except ValueError:
        return None
    if not host:
        return None
    return host.rstrip(".").lower() or None


@dataclass(frozen=True, slots=True)
class HostMap:
    hosts: Mapping[str, str] = field(default_factory=dict)  # host → provider name
    warnings: tuple[str, ...] = ()

    def provider_for(self, host: str) -> str | None:
        return self.hosts.get(host)


def build_host_map(providers: Iterable[Provider]) -> HostMap:
    by_name = sorted(providers, key=lambda p: p.name)
    claims: dict[str, list[str]] = {}
    for provider in by_name:
        host = url_host(provider.endpoint)
        if host is not None:
            claims.setdefault(host, []).append(provider.name)
    names = {p.name: p for p in by_name}
    for host, type_name in WELL_KNOWN_HOSTS.items():
        named = names.get(type_name)
        if (
            named is not None
            and named.type.value == type_name
            and named.name not in claims.get(host, [])
        ):
            claims.setdefault(host, []).append(named.name)
    hosts: dict[str, str] = {}
    warnings: list[str] = []
    for host, claimants in sorted(claims.items()):
        hosts[host] = claimants[0]
        if len(claimants) > 1:
            warnings.append(
                f"proxy: {host} is claimed by providers {', '.join(claimants)}; "
                f"it is decrypted for {claimants[0]} (the first by name)"
            )
    return HostMap(MappingProxyType(hosts), tuple(warnings))
