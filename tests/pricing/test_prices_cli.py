"""`relay prices` in this process (main() as the console script calls it), on a real database."""

from __future__ import annotations

import json

import pytest

from relay.cli import main


@pytest.fixture
def run(pg_dsn, monkeypatch, capsys):  # type: ignore[no-untyped-def]
    for name in list(__import__("os").environ):
        if name.startswith("CODER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CODER_PG_CONNECTION_URL", pg_dsn)

    def run(*args: str, status: int = 0) -> str:
        code = main(list(args))
        out, err = capsys.readouterr()
        assert code == status, err
        return out if status == 0 else err

    return run


def test_prices_list_set_import_remove(run, tmp_path):  # type: ignore[no-untyped-def]
    listed = run("prices", "list")
    assert "checked 2026-12-03" in listed
    sonnet = next(line for line in listed.splitlines() if " claude-sonnet-4-5 " in line)
    assert sonnet.split()[3:9] == ["3", "15", "0.3", "3.75", "6", "-"]

    out = run(
        "prices",
        "set",
        "bedrock",
        "claude-sonnet-4-5",
        "--input",
        "3.30",
        "--output",
        "16.50",
        "--cache-read",
        "0.33",
        "--from",
        "2025-01-01",
    )
    assert "bedrock claude-sonnet-4-5 from 2025-01-01" in out
    assert "bedrock    claude-sonnet-4-5" in run("prices", "list")
    # Money is never a float: a seventh decimal is refused, not rounded.
    err = run("prices", "set", "openai", "x", "--input", "0.0000001", "--output", "1", status=1)
    assert "six decimals" in err

    book = tmp_path / "book.json"
    book.write_text(
        json.dumps(
            {
                "effective_from": "2025-06-01",
                "prices": [
                    {
                        "provider_type": "openai",
                        "model": "ft:gpt-4o*",
                        "input": "3.75",
                        "output": "15",
                    },
                    {"provider_type": "openai", "model": "gpt-4o", "input": "2", "output": "8"},
                ],
            }
        )
    )
    assert "imported 2 price(s)" in run("prices", "import", str(book))
    everything = run("prices", "list", "--all")
    gpt4o = [line.split() for line in everything.splitlines() if " gpt-4o " in line]
    # The default and the operator's later one: both kept, the past not rewritten.
    assert [(row[2], row[-1]) for row in gpt4o] == [
        ("2024-01-01", "default"),
        ("2025-06-01", "admin"),
    ]
    assert "ft:gpt-4o*" in everything

    assert "removed 1 price(s)" in run("prices", "remove", "openai", "ft:gpt-4o*")
    assert "no price" in run("prices", "remove", "openai", "ft:gpt-4o*", status=1)
    assert "every recorded usage" in run("prices", "unpriced")
    bad = tmp_path / "bad.json"
    bad.write_text(
        '{"prices": [{"provider_type": "openai", "model": "m", "input": 1.5, "output": "1"}]}'
    )
    assert "prices[1]" in run("prices", "import", str(bad), status=1)
