"""The `relay` command end to end: each command in its own process, on a real database."""

from __future__ import annotations

import getpass
import json
import subprocess
import sys
import uuid

import pytest
import trio

from relay.auth import list_users, verify_token
from relay.db.bridge import Database
from relay.options import OPTIONS
from tests.relay_harness import clean_env

KEY_A = "sk-proj-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA1111"
KEY_B = "sk-proj-BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB2222"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def relay(
    *args: str, env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay.cli", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def admin_env(pg_dsn: str) -> dict[str, str]:
    return clean_env(CODER_PG_CONNECTION_URL=pg_dsn)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_serve_help_lists_only_new_names_with_one_note():
    out = ok(relay("serve", "--help", env=clean_env()))
    for opt in OPTIONS:
        assert opt.flag in out
        if opt.alias_flag:
            assert opt.alias_flag not in out
            assert opt.alias_env not in out
    note = [line for line in out.splitlines() if "Old names still work" in line]
    assert len(note) == 1 and "--aibridge-<x>" in note[0]


def test_serve_rejects_bad_provider_configuration_before_starting():
    env = clean_env(
        CODER_AIBRIDGE_PROVIDER_0_TYPE="anthropic",
        CODER_AIBRIDGE_PROVIDER_0_KEY="k1",
        CODER_AIBRIDGE_PROVIDER_0_KEYS="k2,k3",
        CODER_AI_GATEWAY_PROVIDER_2_TYPE="openai",
    )
    result = relay("serve", env=env)
    assert result.returncode == 2
    assert "CODER_AIBRIDGE_PROVIDER_0_KEY and CODER_AIBRIDGE_PROVIDER_0_KEYS" in result.stderr
    assert "CODER_AI_GATEWAY_PROVIDER_2_TYPE" in result.stderr
    assert "k2,k3" not in result.stderr


def test_serve_rejects_a_bad_option_value_naming_the_flag():
    result = relay("serve", "--aibridge-allow-byok", "perhaps", env=clean_env())
    assert result.returncode == 2
    assert "--aibridge-allow-byok" in result.stderr
    assert "deprecated; use --ai-gateway-allow-byok" in result.stderr


def test_admin_command_without_a_database_fails_clearly():
    result = relay(
        "users", "list", env=clean_env(CODER_PG_CONNECTION_URL="postgresql://x:pw@127.0.0.1:1/x")
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "relay: cannot connect to the database postgresql://x:***@127.0.0.1:1/x: "
        "connection refused (is PostgreSQL running and listening there?)"
    ]


def test_providers_commands(admin_env):
    outputs: list[str] = []

    def run(*args: str, stdin: str | None = None) -> str:
        result = relay("providers", *args, env=admin_env, stdin=stdin)
        outputs.extend([result.stdout, result.stderr])
        return ok(result)

    out = run(
        "add", "openai-eu", "--type", "openai", "--key", KEY_A, "--base-url", "https://eu/v1/"
    )
    assert "openai-eu" in out and "sk-…1111" in out
    out = run("add", "claude", "--type", "anthropic", "--keys-stdin", stdin=f"{KEY_A}\n{KEY_B}\n")
    assert "sk-…1111, sk-…2222" in out
    run(
        "add",
        "bedrock-us",
        "--type",
        "bedrock",
        "--bedrock-region",
        "us-east-1",
        "--bedrock-access-key",
        "AKIAIOSFODNN7EXAMPLE",
        "--bedrock-access-key-secret",
        AWS_SECRET,
    )
    duplicate = relay("providers", "add", "claude", "--type", "openai", env=admin_env)
    assert duplicate.returncode == 1 and "already exists" in duplicate.stderr

    listing = run("list").splitlines()
    assert listing[0].split() == ["NAME", "TYPE", "SOURCE", "ENABLED", "ENDPOINT", "CREDENTIALS"]
    rows = {line.split()[0]: line for line in listing[1:]}
    assert set(rows) == {"bedrock-us", "claude", "openai-eu"}
    assert "https://api.anthropic.com/" in rows["claude"]
    assert "https://bedrock-runtime.us-east-1.amazonaws.com" in rows["bedrock-us"]
    assert "aws AKI…MPLE" in rows["bedrock-us"]

    assert "sk-…2222" in run("update", "openai-eu", "--keys-stdin", stdin=KEY_B)
    assert "openai-eu" in run("update", "openai-eu", "--responses-websocket", "false")
    not_a_bool = relay(
        "providers", "update", "openai-eu", "--responses-websocket", "maybe", env=admin_env
    )
    assert not_a_bool.returncode == 2 and "not a boolean" in not_a_bool.stderr
    assert "disabled provider claude" in run("disable", "claude")
    assert "removed provider bedrock-us" in run("remove", "bedrock-us")
    listing = run("list")
    assert rows_enabled(listing) == {"claude": "no", "openai-eu": "yes"}
    assert "sk-…2222" in listing and "sk-…1111" not in listing.splitlines()[-1]
    missing = relay("providers", "enable", "bedrock-us", env=admin_env)
    assert missing.returncode == 1 and "no provider named" in missing.stderr
    empty = relay("providers", "update", "claude", env=admin_env)
    assert empty.returncode == 1 and "nothing to update" in empty.stderr

    everything = "\n".join(outputs)
    for secret in (KEY_A, KEY_B, AWS_SECRET):
        assert secret not in everything


def rows_enabled(listing: str) -> dict[str, str]:
    return {line.split()[0]: line.split()[3] for line in listing.splitlines()[1:]}


def test_users_and_tokens_commands(admin_env, pg_dsn):
    assert "created user alice" in ok(relay("users", "create", "alice", env=admin_env))
    assert "alice" in ok(relay("users", "list", env=admin_env))
    created = relay("tokens", "create", "--user", "alice", "--expires", "30d", env=admin_env)
    token = ok(created).strip()
    assert token.startswith("relay_") and "\n" not in token
    assert "shown only this once" in created.stderr and "expires" in created.stderr
    key_id = token.split("_")[1]

    async def check() -> object:
        async with Database.open(pg_dsn, max_size=1) as db:
            return await verify_token(db, token)

    principal = trio.run(check)
    assert principal is not None and principal.user_name == "alice"

    listing = ok(relay("tokens", "list", env=admin_env))
    assert token not in listing and token.split("_", 2)[2] not in listing
    (row,) = [line for line in listing.splitlines() if line.startswith(key_id)]
    assert "alice" in row and "active" in row

    assert f"revoked token {key_id}" in ok(relay("tokens", "revoke", key_id, env=admin_env))
    assert "revoked" in ok(relay("tokens", "list", "--user", "alice", env=admin_env))
    assert trio.run(check) is None

    nobody = relay("tokens", "create", "--user", "nobody", env=admin_env)
    assert nobody.returncode == 1 and "no user named 'nobody'" in nobody.stderr
    bad = relay("tokens", "create", "--user", "alice", "--expires", "soon", env=admin_env)
    assert bad.returncode == 1 and "--expires" in bad.stderr


def test_admin_commands_use_the_embedded_cluster_when_no_url_is_set(pg_cluster):
    # The test run's cluster is an embedded one: a command pointed at its data
    # directory joins the running server, and leaves it running for its other user.
    data_dir = pg_cluster.embedded.data_dir
    name = f"carol-{uuid.uuid4().hex[:8]}"
    created = relay("users", "create", name, env=clean_env(CODER_AIBRIDGE_DATA_DIR=str(data_dir)))
    assert f"created user {name}" in ok(created)
    assert "CODER_AIBRIDGE_DATA_DIR is deprecated" in created.stderr
    assert pg_cluster.embedded.is_running()

    async def names() -> list[str]:
        async with Database.open(pg_cluster.embedded.dsn, max_size=1) as db:
            return [user.name for user in await list_users(db)]

    assert name in trio.run(names)


def _audit(pg_dsn: str) -> list[dict[str, object]]:
    async def read() -> list[dict[str, object]]:
        async with Database.open(pg_dsn, max_size=1) as db:
            rows = await db.fetch(
                "SELECT actor_id, actor_name, via, action, target, detail::text AS detail "
                "FROM audit_log ORDER BY id"
            )
            return [{**dict(r), "detail": json.loads(r["detail"])} for r in rows]

    return trio.run(read)


def test_the_admin_role_is_set_listed_and_audited(admin_env, pg_dsn):
    assert "an admin" in ok(relay("users", "create", "root", "--admin", env=admin_env))
    ok(relay("users", "create", "bob", env=admin_env))
    roles = {
        line.split()[0]: line.split()[2]
        for line in ok(relay("users", "list", env=admin_env)).splitlines()[1:]
    }
    header = ok(relay("users", "list", env=admin_env)).splitlines()[0].split()
    assert header == ["NAME", "ID", "ROLE", "CREATED"]
    assert roles == {"bob": "user", "root": "admin"}

    assert "bob is now an admin" in ok(relay("users", "admin", "bob", env=admin_env))
    assert "already" in ok(relay("users", "admin", "bob", env=admin_env))  # no change: not audited
    assert "root is no longer an admin" in ok(
        relay("users", "admin", "root", "--revoke", env=admin_env)
    )
    roles = {
        line.split()[0]: line.split()[2]
        for line in ok(relay("users", "list", env=admin_env)).splitlines()[1:]
    }
    assert roles == {"bob": "admin", "root": "user"}
    nobody = relay("users", "admin", "nobody", env=admin_env)
    assert nobody.returncode == 1 and "no user named 'nobody'" in nobody.stderr

    token = ok(relay("tokens", "create", "--user", "bob", env=admin_env)).strip()
    key_id = token.split("_")[1]
    ok(relay("tokens", "revoke", key_id, env=admin_env))
    ok(relay("providers", "add", "openai-eu", "--type", "openai", "--key", KEY_A, env=admin_env))
    ok(relay("providers", "disable", "openai-eu", env=admin_env))
    ok(relay("providers", "list", env=admin_env))  # a reading: not audited

    who = getpass.getuser()
    entries = _audit(pg_dsn)
    assert [(e["action"], e["target"]) for e in entries] == [
        ("user.create", "root"),
        ("user.create", "bob"),
        ("user.admin", "bob"),
        ("user.admin", "root"),
        ("token.create", key_id),
        ("token.revoke", key_id),
        ("provider.add", "openai-eu"),
        ("provider.disable", "openai-eu"),
    ]
    assert {(e["via"], e["actor_name"], e["actor_id"]) for e in entries} == {("cli", who, None)}
    assert entries[0]["detail"]["admin"] is True and entries[1]["detail"]["admin"] is False
    assert entries[2]["detail"]["admin"] is True and entries[3]["detail"]["admin"] is False
    assert entries[4]["detail"] == {"user": "bob", "expires_at": None}
    assert entries[6]["detail"] == {"type": "openai", "keys": "replaced"}
    everything = json.dumps(entries)
    assert token not in everything and token.split("_", 2)[2] not in everything
    assert KEY_A not in everything
