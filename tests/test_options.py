"""The options registry: aliases, precedence, flags, and the generated reference."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from relay.options import (
    OPTIONS,
    OPTIONS_BY_KEY,
    OptionError,
    Warnings,
    add_flags,
    deprecation_line,
    load_options,
    markdown,
    parse_address,
    parse_bool,
    parse_duration,
    parse_int,
    parse_non_negative_int,
    parse_optional_address,
    parse_pg_url,
    parse_positive_int,
    parse_size,
)

ROOT = Path(__file__).resolve().parent.parent


def sample(key: str) -> tuple[str, object]:
    """A value the option accepts, unlike its default, and what it parses to."""
    opt = OPTIONS_BY_KEY[key]
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


def test_reference_lists_only_new_names():
    text = markdown()
    for opt in OPTIONS:
        assert f"`{opt.env}`" in text and f"`{opt.flag}`" in text
        if opt.alias_env:
            assert opt.alias_env not in text
            assert opt.alias_flag not in text
    assert "Old names still work" in text
