"""The decrypted host set (relay.proxy.hosts): base URL hosts, well-known hosts, conflicts."""

from __future__ import annotations

from relay.providers.types import Provider, ProviderType
from relay.proxy.hosts import build_host_map, url_host


def provider(name: str, type_: ProviderType, base_url: str) -> Provider:
    return Provider(name=name, type=type_, base_url=base_url)


def test_base_url_hosts_and_well_known_hosts() -> None:
    hosts = build_host_map(
        [
            provider("anthropic", ProviderType.ANTHROPIC, "http://127.0.0.1:9999/"),
            provider("corp", ProviderType.OPENAI, "https://LLM.corp.example./v1/"),
            provider("copilot", ProviderType.COPILOT, "https://api.individual.githubcopilot.com/"),
        ]
    )
    assert dict(hosts.hosts) == {
        "127.0.0.1": "anthropic",
        "api.anthropic.com": "anthropic",  # named after its type
        "llm.corp.example": "corp",
        "api.individual.githubcopilot.com": "copilot",
        "api.business.githubcopilot.com": "copilot",
        "api.enterprise.githubcopilot.com": "copilot",
    }
    # No provider named openai: api.openai.com is tunneled, not decrypted.
    assert hosts.provider_for("api.openai.com") is None
    assert hosts.warnings == ()


def test_a_well_known_host_needs_the_name_and_the_type() -> None:
    # A provider named "openai" of another type does not claim api.openai.com.
    hosts = build_host_map([provider("openai", ProviderType.ANTHROPIC, "http://10.0.0.1/")])
    assert hosts.provider_for("api.openai.com") is None


def test_two_claimants_the_first_by_name_wins_with_a_warning() -> None:
    hosts = build_host_map(
        [
            provider("zeta", ProviderType.OPENAI, "https://api.openai.com/v1/"),
            provider("alpha", ProviderType.OPENAI, "https://api.openai.com/v1/"),
            provider("openai", ProviderType.OPENAI, "https://api.openai.com/v1/"),
        ]
    )
    assert hosts.provider_for("api.openai.com") == "alpha"
    assert hosts.warnings == (
        "proxy: api.openai.com is claimed by providers alpha, openai, zeta; "
        "it is decrypted for alpha (the first by name)",
    )


def test_url_host() -> None:
    assert url_host("https://API.Example.com.:8443/x") == "api.example.com"
    assert url_host("") is None
    assert url_host("not a url") is None
    assert url_host("http://[::1]:80/") == "::1"
