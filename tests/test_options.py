"""The options registry: aliases, precedence, flags, and the generated reference."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from relay.option_fields import OptionFields
from relay.options import (
    OPTIONS,
    OPTIONS_BY_KEY,
    Option,
    OptionError,
    Warnings,
    add_flags,
    deprecation_line,
    field_type,
    fields_source,
    load_options,
    markdown,
    parse_address,
    parse_bool,
    parse_cidr_list,
    parse_duration,
    parse_int,
    parse_non_negative_int,
    parse_optional_address,
    parse_pg_url,
    parse_positive_int,
    parse_proxy_upstream,
    parse_size,
)

ROOT = Path(__file__).resolve().parent.parent


def sample(key: str) -> tuple[str, object]:
    """A value the option accepts, unlike its default, and what it parses to."""
    opt = OPTIONS_BY_KEY[key]
    if key == "MAX_BODIES_IN_FLIGHT":
        return ("0", 0)  # 0 (no limit) or at least MAX_REQUEST_BODY: 3KiB is refused
    if key == "MINUTE_LIMITS_PER":
        return ("token", "token")  # user (the default) or token
    if opt.parse is parse_bool:
        return ("false", False) if parse_bool(opt.default) else ("true", True)
    by_parser: dict[object, tuple[str, object]] = {
        parse_duration: ("7s", 7.0),
        parse_size: ("3KiB", 3 * 1024),
        parse_int: ("7", 7),
        parse_address: ("127.0.0.7:7007", "127.0.0.7:7007"),
        parse_optional_address: ("127.0.0.7:7008", "127.0.0.7:7008"),
        parse_pg_url: ("postgresql://u@db.example/relay", "postgresql://u@db.example/relay"),
        parse_non_negative_int: ("7", 7),
        parse_positive_int: ("7", 7),
        parse_cidr_list: ("10.1.0.0/16, fd00::1/8", "10.1.0.0/16,fd00::/8"),
        parse_proxy_upstream: ("http://corp.example:3128", "http://corp.example:3128"),
    }
    if opt.parse in by_parser:
        return by_parser[opt.parse]
    raw = f"value-of-{key.lower()}"
    return raw, opt.parse(raw)


def parse_flags(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_flags(parser)
    return parser.parse_args(argv)


ALIASED = [o for o in OPTIONS if o.alias_env]


@pytest.mark.parametrize("opt", ALIASED, ids=lambda o: o.key)
def test_every_alias_env_works_and_prints_one_deprecation_line(opt):
    raw, expected = sample(opt.key)
    warnings = Warnings()
    options = load_options({opt.alias_env: raw}, warn=warnings)
    assert getattr(options, opt.attr) == expected
    assert options.source(opt.attr) == opt.alias_env
    assert warnings.lines == [deprecation_line(opt.alias_env, opt.env)]
    assert opt.env in warnings.lines[0]


@pytest.mark.parametrize("opt", ALIASED, ids=lambda o: o.key)
def test_every_alias_flag_works_and_prints_one_deprecation_line(opt):
    raw, expected = sample(opt.key)
    warnings = Warnings()
    options = load_options({}, parse_flags([opt.alias_flag, raw]), warn=warnings)
    assert getattr(options, opt.attr) == expected
    assert warnings.lines == [deprecation_line(opt.alias_flag, opt.flag)]


@pytest.mark.parametrize("opt", ALIASED, ids=lambda o: o.key)
def test_new_name_wins_over_alias_without_error_or_warning(opt):
    raw, expected = sample(opt.key)
    warnings = Warnings()
    env = {opt.env: raw, opt.alias_env: "something else entirely"}
    options = load_options(env, warn=warnings)
    assert getattr(options, opt.attr) == expected
    assert options.source(opt.attr) == opt.env
    assert warnings.lines == []


def test_flag_beats_env_and_alias_flag_beats_env():
    env = {"CODER_AI_GATEWAY_HTTP_ADDRESS": "127.0.0.1:1111"}
    options = load_options(env, parse_flags(["--ai-gateway-http-address", "127.0.0.1:2222"]))
    assert options.http_address == "127.0.0.1:2222"
    assert options.source("http_address") == "--ai-gateway-http-address"
    warnings = Warnings()
    options = load_options(
        env, parse_flags(["--aibridge-http-address", "127.0.0.1:3333"]), warn=warnings
    )
    assert options.http_address == "127.0.0.1:3333"
    assert len(warnings.lines) == 1


def test_new_flag_wins_over_alias_flag():
    flags = parse_flags(["--aibridge-dump-dir", "/old", "--ai-gateway-dump-dir", "/new"])
    warnings = Warnings()
    assert load_options({}, flags, warn=warnings).dump_dir == "/new"
    assert warnings.lines == []


def test_defaults_and_the_database_url_has_no_alias():
    options = load_options({})
    assert options.http_address == "127.0.0.1:4001"
    assert options.allow_byok is True
    assert options.pg_connection_url == ""
    assert options.openai_base_url == "https://api.openai.com/v1/"
    assert options.anthropic_base_url == "https://api.anthropic.com/"
    assert options.bedrock_model == "global.anthropic.claude-sonnet-4-5-20250929-v1:0"
    assert options.bedrock_small_fast_model == "global.anthropic.claude-haiku-4-5-20251001-v1:0"
    pg = OPTIONS_BY_KEY["PG_CONNECTION_URL"]
    assert pg.env == "CODER_PG_CONNECTION_URL" and pg.alias_env is None
    url = "postgresql://u@h/db"
    assert load_options({"CODER_PG_CONNECTION_URL": url}).pg_connection_url == url


def test_a_bad_value_names_its_source():
    with pytest.raises(OptionError, match="CODER_AIBRIDGE_ALLOW_BYOK"):
        load_options({"CODER_AIBRIDGE_ALLOW_BYOK": "perhaps"}, warn=lambda _line: None)


def test_configuration_reference_is_generated_from_the_registry():
    on_disk = (ROOT / "docs" / "configuration.md").read_text()
    assert on_disk == markdown(), (
        "docs/configuration.md is out of date: "
        "run `python -m relay.options --markdown > docs/configuration.md`"
    )
    generated = subprocess.run(
        [sys.executable, "-m", "relay.options", "--markdown"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    assert generated == on_disk


def test_typed_option_fields_are_generated_from_the_registry():
    on_disk = (ROOT / "relay" / "option_fields.py").read_text()
    assert on_disk == fields_source(), (
        "relay/option_fields.py is out of date: run `just generate` "
        "(python -m relay.options --write-fields)"
    )


def test_options_have_one_typed_frozen_field_per_option():
    fields = {f.name: f.type for f in dataclasses.fields(OptionFields)}
    assert list(fields) == [opt.attr for opt in OPTIONS]
    options = load_options({}, warn=lambda _line: None)
    for opt in OPTIONS:
        value = getattr(options, opt.attr)
        assert type(value).__name__ == fields[opt.attr] == field_type(opt), opt.key
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.rate_limit = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        options.no_such_option  # type: ignore[attr-defined]  # noqa: B018
    changed = options.replace(data_dir="/srv/relay")
    assert (changed.data_dir, options.data_dir) == ("/srv/relay", "")
    assert changed.source("data_dir") == options.source("data_dir") == "default"


def test_an_option_whose_parser_has_no_return_type_cannot_be_generated():
    def untyped(text):  # type: ignore[no-untyped-def]
        return text

    with pytest.raises(TypeError, match="FOO"):
        field_type(Option("FOO", untyped, "", "help"))


def test_reference_lists_only_new_names():
    text = markdown()
    for opt in OPTIONS:
        assert f"`{opt.env}`" in text and f"`{opt.flag}`" in text
        if opt.alias_env:
            assert opt.alias_env not in text
            assert opt.alias_flag not in text
    assert "Old names still work" in text


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"CODER_AI_GATEWAY_MAX_BODIES_IN_FLIGHT": "1MiB"},
            "CODER_AI_GATEWAY_MAX_BODIES_IN_FLIGHT: 1048576 bytes is less than MAX_REQUEST_BODY "
            "(33554432 bytes); use 0 (no limit) or at least MAX_REQUEST_BODY",
        ),
        (
            {"CODER_AI_GATEWAY_MAX_REQUEST_BODY": "1GiB"},
            "CODER_AI_GATEWAY_MAX_BODIES_IN_FLIGHT (default): 268435456 bytes is less than "
            "MAX_REQUEST_BODY (1073741824 bytes); use 0 (no limit) or at least MAX_REQUEST_BODY",
        ),
        (
            {"CODER_AIBRIDGE_METRICS_MAX_MODELS": "-1"},
            "CODER_AIBRIDGE_METRICS_MAX_MODELS: cannot be negative",
        ),
    ],
)
def test_values_that_cannot_be_used_together_are_refused_when_options_load(env, message):
    with pytest.raises(OptionError) as refused:
        load_options(env, warn=lambda _line: None)
    assert str(refused.value) == message


def test_a_body_budget_of_0_or_at_least_the_largest_body_is_accepted():
    for value in ("0", "32MiB", "1GiB"):
        options = load_options({"CODER_AI_GATEWAY_MAX_BODIES_IN_FLIGHT": value}, warn=print)
        assert options.max_bodies_in_flight in (0, 32 * 1024**2, 1024**3)


def test_allowed_private_cidrs_are_checked_at_load() -> None:
    env = {"CODER_AI_GATEWAY_PROXY_ALLOWED_PRIVATE_CIDRS": "10.0.0.0/8,not-a-range"}
    with pytest.raises(OptionError, match="'not-a-range' is not an address range"):
        load_options(env, warn=lambda line: None)
