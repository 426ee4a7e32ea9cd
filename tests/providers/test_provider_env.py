"""Providers from the environment: indexed providers, aliases, legacy options, errors."""

from __future__ import annotations

import argparse

import pytest

from relay.options import PROVIDER_KEYS, Warnings, add_flags, deprecation_line, load_options
from relay.providers.env import ProviderConfigError, providers_from_env
from relay.providers.types import Provider, ProviderType, mask_secret

NEW = "CODER_AI_GATEWAY_PROVIDER_"
OLD = "CODER_AIBRIDGE_PROVIDER_"


def read(env: dict[str, str]) -> tuple[list[Provider], list[str]]:
    warnings = Warnings()
    return providers_from_env(env, warnings), warnings.lines


def error_of(env: dict[str, str]) -> str:
    with pytest.raises(ProviderConfigError) as info:
        providers_from_env(env, Warnings())
    return str(info.value)


def test_the_two_instance_example_works_as_written():
    env = {
        "CODER_AIBRIDGE_PROVIDER_0_TYPE": "anthropic",
        "CODER_AIBRIDGE_PROVIDER_0_NAME": "anthropic-corp",
        "CODER_AIBRIDGE_PROVIDER_0_KEY": "sk-ant-corp-xxx",
        "CODER_AIBRIDGE_PROVIDER_0_BASE_URL": "https://llm-proxy.internal.example.com/anthropic",
        "CODER_AIBRIDGE_PROVIDER_1_TYPE": "anthropic",
        "CODER_AIBRIDGE_PROVIDER_1_NAME": "anthropic-direct",
        "CODER_AIBRIDGE_PROVIDER_1_KEY": "sk-ant-direct-yyy",
    }
    providers, warnings = read(env)
    assert providers == [
        Provider(
            name="anthropic-corp",
            type=ProviderType.ANTHROPIC,
            base_url="https://llm-proxy.internal.example.com/anthropic",
            keys=("sk-ant-corp-xxx",),
        ),
        Provider(
            name="anthropic-direct",
            type=ProviderType.ANTHROPIC,
            base_url="https://api.anthropic.com/",
            keys=("sk-ant-direct-yyy",),
        ),
    ]
    # One deprecation line per variable, each naming the new variable.
    assert sorted(warnings) == sorted(
        deprecation_line(name, name.replace(OLD, NEW)) for name in env
    )


# For each key under the old prefix: a provider type it applies to, a value, and
# how the value shows on the Provider.
ALIAS_CASES = {
    "NAME": ("openai", "my-name", lambda p: p.name),
    "KEY": ("openai", "sk-single", lambda p: p.keys),
    "BASE_URL": ("openai", "https://openai.example.com/v1/", lambda p: p.base_url),
    "BEDROCK_REGION": ("bedrock", "eu-west-1", lambda p: p.bedrock_region),
    "BEDROCK_ACCESS_KEY": ("bedrock", "AKIAEXAMPLE", lambda p: p.bedrock_access_key),
    "BEDROCK_ACCESS_KEY_SECRET": ("bedrock", "s3cr3t", lambda p: p.bedrock_access_key_secret),
    "BEDROCK_MODEL": ("bedrock", "model-a", lambda p: p.bedrock_model),
    "BEDROCK_SMALL_FAST_MODEL": ("bedrock", "model-b", lambda p: p.bedrock_small_fast_model),
    "BEDROCK_BASE_URL": ("bedrock", "https://gw.example.com", lambda p: p.bedrock_base_url),
    "RESPONSES_WEBSOCKET": ("openai", "false", lambda p: str(p.responses_websocket).lower()),
}
PARTNERS = {
    "BEDROCK_ACCESS_KEY": "BEDROCK_ACCESS_KEY_SECRET",
    "BEDROCK_ACCESS_KEY_SECRET": "BEDROCK_ACCESS_KEY",
}


def test_alias_cases_cover_every_key():
    assert set(ALIAS_CASES) | {"TYPE", "KEYS"} == {k for k, _ in PROVIDER_KEYS}


@pytest.mark.parametrize("key", sorted(ALIAS_CASES))
def test_every_indexed_alias_works_with_its_deprecation_line(key):
    ptype, value, shown = ALIAS_CASES[key]
    env = {f"{NEW}0_TYPE": ptype, f"{OLD}0_{key}": value}
    if key in PARTNERS:  # an access key needs its partner; given under the new name
        env[f"{NEW}0_{PARTNERS[key]}"] = "the-partner"
    (provider,), warnings = read(env)
    assert warnings == [deprecation_line(f"{OLD}0_{key}", f"{NEW}0_{key}")]
    assert shown(provider) == ((value,) if key == "KEY" else value)


def test_responses_websocket_is_on_unless_switched_off():
    (on,), _ = read({f"{NEW}0_TYPE": "openai"})
    assert on.responses_websocket is True
    (off,), _ = read({f"{NEW}0_TYPE": "openai", f"{NEW}0_RESPONSES_WEBSOCKET": "off"})
    assert off.responses_websocket is False
    with pytest.raises(ProviderConfigError, match="RESPONSES_WEBSOCKET: not a boolean"):
        read({f"{NEW}0_TYPE": "openai", f"{NEW}0_RESPONSES_WEBSOCKET": "maybe"})


def test_alias_type_and_keys_work():
    providers, warnings = read({f"{OLD}0_TYPE": "openai", f"{OLD}0_KEYS": "sk-a, sk-b"})
    assert providers[0].type is ProviderType.OPENAI and providers[0].keys == ("sk-a", "sk-b")
    assert len(warnings) == 2


def test_new_name_wins_over_alias_per_variable_without_error():
    env = {
        f"{NEW}0_TYPE": "openai",
        f"{OLD}0_TYPE": "anthropic",
        f"{NEW}0_NAME": "new-name",
        f"{OLD}0_NAME": "old-name",
        f"{OLD}0_KEY": "sk-from-the-alias",
    }
    providers, warnings = read(env)
    assert [(p.name, p.type, p.keys) for p in providers] == [
        ("new-name", ProviderType.OPENAI, ("sk-from-the-alias",))
    ]
    assert warnings == [deprecation_line(f"{OLD}0_KEY", f"{NEW}0_KEY")]


def test_indices_sort_numerically():
    env = {f"{NEW}{i}_TYPE": "openai" for i in range(12)}
    env |= {f"{NEW}{i}_NAME": f"p{i}" for i in range(12)}
    providers, _ = read(env)
    assert [p.name for p in providers] == [f"p{i}" for i in range(12)]


def test_name_defaults_to_type_and_base_urls_to_the_types():
    providers, _ = read({f"{NEW}0_TYPE": "openai", f"{NEW}1_TYPE": "anthropic"})
    assert [(p.name, p.base_url) for p in providers] == [
        ("openai", "https://api.openai.com/v1/"),
        ("anthropic", "https://api.anthropic.com/"),
    ]


def test_a_gap_is_an_error_naming_the_variables():
    message = error_of({f"{NEW}0_TYPE": "openai", f"{NEW}2_TYPE": "anthropic"})
    assert f"{NEW}2_TYPE" in message and "index 1 is missing" in message


def test_not_starting_at_zero_is_a_gap():
    message = error_of({f"{OLD}1_TYPE": "openai"})
    assert f"{OLD}1_TYPE" in message and "index 0 is missing" in message


def test_a_non_numeric_index_is_an_error():
    assert f"{NEW}X_TYPE" in error_of({f"{NEW}X_TYPE": "openai"})


@pytest.mark.parametrize(
    "env",
    [
        {f"{NEW}0_TYPE": "openai", f"{NEW}0_NAME": "dup", f"{NEW}1_TYPE": "anthropic"}
        | {f"{NEW}1_NAME": "dup"},
        {f"{NEW}0_TYPE": "anthropic", f"{NEW}1_TYPE": "anthropic"},
    ],
    ids=["explicit", "defaulted"],
)
def test_a_duplicate_name_is_an_error_naming_both_variables(env):
    message = error_of(env)
    name_or_type = "NAME" if f"{NEW}0_NAME" in env else "TYPE"
    assert f"{NEW}0_{name_or_type}" in message and f"{NEW}1_{name_or_type}" in message
    assert "both define a provider named" in message


def test_an_unknown_type_is_an_error():
    message = error_of({f"{OLD}0_TYPE": "gemini"})
    assert f"{OLD}0_TYPE" in message and "unknown TYPE" in message


def test_a_missing_type_is_an_error():
    assert f"{NEW}0_TYPE is required" in error_of({f"{NEW}0_NAME": "x"})


def test_key_with_keys_is_an_error():
    message = error_of({f"{NEW}0_TYPE": "openai", f"{NEW}0_KEY": "a", f"{OLD}0_KEYS": "b"})
    assert f"{NEW}0_KEY and {OLD}0_KEYS are both set" in message


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ("k1,k2,k3,k4,k5,k6", "too many keys (6), at most 5"),
        ("k1,,k2", "key 1 is blank"),
        ("k1, k2 ,k1", "key 2 is a duplicate"),
    ],
)
def test_keys_rules(keys, problem):
    message = error_of({f"{NEW}0_TYPE": "openai", f"{NEW}0_KEYS": keys})
    assert f"{NEW}0_KEYS" in message and problem in message


def test_five_keys_trimmed_are_fine():
    providers, _ = read({f"{NEW}0_TYPE": "openai", f"{NEW}0_KEYS": " a , b,c,d,e "})
    assert providers[0].keys == ("a", "b", "c", "d", "e")


def test_bedrock_access_keys_with_key_is_an_error():
    env = {
        f"{NEW}0_TYPE": "bedrock",
        f"{NEW}0_KEY": "bedrock-api-key",
        f"{NEW}0_BEDROCK_ACCESS_KEY": "AKIA",
        f"{NEW}0_BEDROCK_ACCESS_KEY_SECRET": "s",
    }
    message = error_of(env)
    assert f"{NEW}0_KEY and {NEW}0_BEDROCK_ACCESS_KEY are both set" in message


def test_bedrock_access_key_without_secret_is_an_error():
    message = error_of({f"{NEW}0_TYPE": "bedrock", f"{NEW}0_BEDROCK_ACCESS_KEY": "AKIA"})
    assert (
        f"{NEW}0_BEDROCK_ACCESS_KEY is set but {NEW}0_BEDROCK_ACCESS_KEY_SECRET is not" in message
    )


def test_a_bad_name_is_an_error():
    message = error_of({f"{NEW}0_TYPE": "openai", f"{NEW}0_NAME": "Bad_Name"})
    assert f"{NEW}0_NAME='Bad_Name'" in message


def test_all_problems_are_reported_at_once():
    message = error_of(
        {f"{NEW}0_TYPE": "gemini", f"{NEW}1_TYPE": "openai", f"{NEW}1_KEY": "a"}
        | {f"{NEW}1_KEYS": "b"}
    )
    assert "unknown TYPE" in message and "both set" in message


def test_an_unknown_key_is_a_warning_only():
    providers, warnings = read({f"{NEW}0_TYPE": "openai", f"{NEW}0_TYYYPE": "openai"})
    assert [p.name for p in providers] == ["openai"]
    assert len(warnings) == 1 and f"{NEW}0_TYYYPE" in warnings[0]


def test_an_unknown_key_names_the_closest_setting():
    _, warnings = read({f"{NEW}0_TYPE": "openai", f"{NEW}0_BASE_ULR": "https://x.example/"})
    assert len(warnings) == 1
    assert warnings[0].startswith(
        f"WARN: {NEW}0_BASE_ULR is not a provider setting and is ignored "
        f"(did you mean {NEW}0_BASE_URL? known: TYPE, NAME,"
    )


def test_bedrock_settings_on_another_type_are_a_warning():
    providers, warnings = read({f"{NEW}0_TYPE": "openai", f"{NEW}0_BEDROCK_REGION": "us-east-1"})
    assert providers[0].bedrock_region == ""
    assert f"{NEW}0_BEDROCK_REGION is ignored" in warnings[0]


def test_bedrock_provider_endpoint_and_model_defaults():
    providers, _ = read(
        {
            f"{NEW}0_TYPE": "bedrock",
            f"{NEW}0_NAME": "bedrock-eu",
            f"{NEW}0_BEDROCK_REGION": "eu-west-1",
            f"{NEW}1_TYPE": "bedrock",
            f"{NEW}1_NAME": "bedrock-gw",
            f"{NEW}1_BASE_URL": "https://gw.example.com/bedrock",
        }
    )
    regional, gateway = providers
    assert regional.endpoint == "https://bedrock-runtime.eu-west-1.amazonaws.com"
    assert regional.bedrock_model == "global.anthropic.claude-sonnet-4-5-20250929-v1:0"
    assert gateway.bedrock_base_url == "https://gw.example.com/bedrock"
    assert gateway.endpoint == "https://gw.example.com/bedrock"


# -- legacy single-provider options ------------------------------------------------


def test_no_configuration_means_no_providers():
    assert read({"HOME": "/root"}) == ([], [])


def test_legacy_options_define_openai_anthropic_and_bedrock():
    env = {
        "CODER_AIBRIDGE_OPENAI_KEY": "sk-openai-legacy-0000",
        "CODER_AI_GATEWAY_ANTHROPIC_BASE_URL": "https://anthropic.example.com/",
        "CODER_AIBRIDGE_BEDROCK_REGION": "us-west-2",
        "CODER_AI_GATEWAY_BEDROCK_ACCESS_KEY": "AKIAEXAMPLE",
        "CODER_AI_GATEWAY_BEDROCK_ACCESS_KEY_SECRET": "secret",
    }
    providers, warnings = read(env)
    by_name = {p.name: p for p in providers}
    assert by_name["openai"].keys == ("sk-openai-legacy-0000",)
    assert by_name["openai"].base_url == "https://api.openai.com/v1/"
    assert by_name["anthropic"].keys == ()  # BYOK only
    assert by_name["anthropic"].base_url == "https://anthropic.example.com/"
    bedrock = by_name["bedrock"]
    assert (bedrock.bedrock_region, bedrock.bedrock_access_key) == ("us-west-2", "AKIAEXAMPLE")
    assert bedrock.bedrock_small_fast_model == "global.anthropic.claude-haiku-4-5-20251001-v1:0"
    assert len(warnings) == 2  # the two CODER_AIBRIDGE_ names


def test_legacy_bedrock_access_key_without_secret_is_an_error():
    message = error_of({"CODER_AI_GATEWAY_BEDROCK_ACCESS_KEY": "AKIA"})
    assert "CODER_AI_GATEWAY_BEDROCK_ACCESS_KEY_SECRET is not" in message


def test_legacy_flag_beats_env():
    parser = argparse.ArgumentParser()
    add_flags(parser)
    flags = parser.parse_args(["--ai-gateway-openai-key", "sk-from-the-flag-0000"])
    env = {"CODER_AI_GATEWAY_OPENAI_KEY": "sk-from-the-env-0000"}
    options = load_options(env, flags)
    (provider,) = providers_from_env(env, Warnings(), options)
    assert provider.keys == ("sk-from-the-flag-0000",)


@pytest.mark.parametrize(
    ("legacy", "indexed", "indexed_var"),
    [
        ("CODER_AIBRIDGE_OPENAI_KEY", {f"{NEW}0_TYPE": "openai"}, f"{NEW}0_TYPE"),
        (
            "CODER_AI_GATEWAY_ANTHROPIC_KEY",
            {f"{OLD}0_TYPE": "openai", f"{OLD}0_NAME": "anthropic"},
            f"{OLD}0_NAME",
        ),
    ],
)
def test_legacy_and_indexed_with_the_same_name_is_an_error_naming_both(
    legacy, indexed, indexed_var
):
    message = error_of({legacy: "sk-legacy-key"} | indexed)
    assert legacy in message and indexed_var in message
    assert "both define a provider named" in message


def test_masking_never_shows_a_key_whole():
    key = "sk-ant-api03-abcdefghijklmnopqrstuvwxyz"
    assert mask_secret(key) == "sk-…wxyz"
    assert mask_secret("short-key") == "…"
    provider = Provider(name="p", type=ProviderType.ANTHROPIC, keys=(key,))
    assert key not in repr(provider) and key not in str(provider) and key not in provider.describe()
    assert provider.masked_keys() == ("sk-…wxyz",)


def test_admin_is_a_reserved_provider_name():
    env = {
        "CODER_AI_GATEWAY_PROVIDER_0_TYPE": "openai",
        "CODER_AI_GATEWAY_PROVIDER_0_NAME": "admin",
        "CODER_AI_GATEWAY_PROVIDER_0_KEY": "sk-admin-provider-key-000",
    }
    with pytest.raises(ProviderConfigError) as info:
        providers_from_env(env, lambda line: None)
    assert "CODER_AI_GATEWAY_PROVIDER_0_NAME='admin'" in str(info.value)
    assert "reserved" in str(info.value)
