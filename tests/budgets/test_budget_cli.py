"""`relay groups` and `relay budgets` in this process, on a real database."""

from __future__ import annotations

import os

import pytest

from relay.cli import main


@pytest.fixture
def run(pg_dsn, monkeypatch, capsys):  # type: ignore[no-untyped-def]
    for name in [n for n in os.environ if n.startswith("CODER_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CODER_PG_CONNECTION_URL", pg_dsn)

    def run(*args: str, status: int = 0) -> str:
        code = main(list(args))
        out, err = capsys.readouterr()
        assert code == status, err
        return out if status == 0 else err

    return run


def test_groups_and_budgets(run):  # type: ignore[no-untyped-def]
    run("users", "create", "alice")
    run("users", "create", "bob")
    assert "created group team" in run("groups", "create", "team")
    assert "exists already" in run("groups", "create", "team", status=1)
    assert "added" in run("groups", "add", "team", "alice")
    run("groups", "add", "team", "bob")
    assert "already in" in run("groups", "add", "team", "bob")
    assert "no user named 'carol'" in run("groups", "add", "team", "carol", status=1)
    assert run("groups", "list").splitlines()[1].split() == ["team", "alice,", "bob"]
    assert "removed" in run("groups", "remove", "team", "bob")

    out = run("budgets", "set", "team-monthly", "--group", "team", "--limit", "250")
    assert "$250.000000 per month" in out
    run(
        "budgets",
        "set",
        "alice-sonnet",
        "--user",
        "alice",
        "--limit",
        "12.50",
        "--period",
        "week",
        "--model",
        "claude-sonnet-4-5",
        "--soft",
        "50",
    )
    listed = [line.split() for line in run("budgets", "list").splitlines()]
    assert listed[0][:3] == ["BUDGET", "FOR", "MODEL"]
    assert listed[1] == [
        "alice-sonnet",
        "user",
        "alice",
        "claude-sonnet-4-5",
        "week",
        "12.500000",
        "0.000000",
        "0%",
        "50%",
    ]
    assert listed[2] == [
        "team-monthly",
        "group",
        "team",
        "(all)",
        "month",
        "250.000000",
        "0.000000",
        "0%",
        "80%",
    ]
    assert "six decimals" in run(
        "budgets", "set", "x", "--user", "alice", "--limit", "0.0000001", status=1
    )
    assert "more than $0" in run("budgets", "set", "x", "--user", "alice", "--limit", "0", status=1)
    assert "no relay token" in run(
        "budgets", "set", "x", "--token", "0123456789ab", "--limit", "1", status=1
    )
    assert "removed budget" in run("budgets", "remove", "alice-sonnet")
    assert "no budget named" in run("budgets", "remove", "alice-sonnet", status=1)
    assert "deleted group team" in run("groups", "delete", "team")
    assert run("budgets", "list") == "no budgets\n"  # the group's budget went with it
