"""The ``relay`` command: ``serve`` and the admin commands.

Admin commands (providers, users, tokens) connect with the same options as
``relay serve`` (``CODER_PG_CONNECTION_URL``, or the embedded cluster in the
data directory, shared with a relay already running on it) and migrate
first. Their changes reach running relays through LISTEN/NOTIFY. Provider
keys are only ever shown masked; a token is printed once, when created.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import trio

from relay import auth
from relay.db.bridge import Database, unavailable
from relay.errors import CommandError, relay_error, sole_exception
from relay.options import (
    OPTIONS,
    OPTIONS_BY_KEY,
    Options,
    add_flags,
    load_options,
    parse_bool,
    parse_duration,
)
from relay.providers import store
from relay.providers.env import providers_from_env
from relay.providers.types import (
    DEFAULT_BASE_URLS,
    DEFAULT_BEDROCK_MODEL,
    DEFAULT_BEDROCK_SMALL_FAST_MODEL,
    Provider,
    ProviderType,
)

OLD_NAMES_NOTE = (
    "Old names still work: each --ai-gateway-<x> flag also answers to --aibridge-<x>, and each "
    "CODER_AI_GATEWAY_<X> variable to CODER_AIBRIDGE_<X> (deprecated; a warning names the new one)."
)
_DB_OPTIONS = [OPTIONS_BY_KEY["PG_CONNECTION_URL"], OPTIONS_BY_KEY["DATA_DIR"]]


def package_version() -> str:
    """The installed distribution's version (the source tree's when run uninstalled)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("relay")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


# -- database -------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_admin_database(options: Options) -> AsyncIterator[Database]:
    """The database ``relay serve`` would use (embedded when no URL is set), migrated."""
    from relay.db.migrate import migrate
    from relay.pricing.store import seed_default_prices
    from relay.services import open_database

    async with open_database(options) as (db, _description):
        await migrate(db)
        await seed_default_prices(db)
        yield db


# -- output -----------------------------------------------------------------------


def _table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(), file=out
        )


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if value is not None else "-"


def _provider_rows(providers: Sequence[Provider]) -> list[list[str]]:
    rows = [["NAME", "TYPE", "SOURCE", "ENABLED", "ENDPOINT", "CREDENTIALS"]]
    for p in providers:
        enabled = "yes" if p.enabled else "no"
        endpoint = p.endpoint or "(AWS region from the environment)"
        rows.append([p.name, p.type.value, p.source, enabled, endpoint, p.credential_hint()])
    return rows


# -- providers ----------------------------------------------------------------------


def _provider_changes(args: argparse.Namespace) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    keys: list[str] = list(args.key or [])
    if args.keys_stdin:
        keys += [line.strip() for line in sys.stdin if line.strip()]
    if keys or args.clear_keys:
        changes["keys"] = tuple(keys)
    for field in store.SETTABLE_FIELDS:
        value = getattr(args, field)
        if value is not None:
            changes[field] = value
    return changes


async def _providers(db: Database, args: argparse.Namespace, out: TextIO) -> None:
    action = args.providers_action
    if action == "list":
        providers = await store.list_providers(db)
        if not providers:
            print("no providers", file=out)
        else:
            _table(_provider_rows(providers), out)
        return
    if action == "add":
        ptype = ProviderType(args.type)
        is_bedrock = ptype is ProviderType.BEDROCK
        fields = _provider_changes(args)
        fields.setdefault("base_url", DEFAULT_BASE_URLS[ptype])
        if is_bedrock:
            fields.setdefault("bedrock_model", DEFAULT_BEDROCK_MODEL)
            fields.setdefault("bedrock_small_fast_model", DEFAULT_BEDROCK_SMALL_FAST_MODEL)
        provider = await store.add_provider(db, Provider(name=args.name, type=ptype, **fields))
        print(f"added provider {provider.describe()}", file=out)
        return
    before = await store.get_provider(db, args.name)
    if before is None:
        raise CommandError(f"no provider named {args.name!r}")
    if action == "remove":
        await store.remove_provider(db, args.name)
        print(f"removed provider {args.name}", file=out)
        if before.source == "env":
            print(
                "note: it came from the environment; the next relay start adds it again "
                "unless its variables are removed",
                file=out,
            )
        return
    if action == "update":
        changes = _provider_changes(args)
        if not changes:
            raise CommandError("nothing to update: give at least one option")
        provider = await store.update_provider(db, args.name, **changes)
        print(f"updated provider {provider.describe()}", file=out)
    else:
        provider = await store.set_provider_enabled(db, args.name, action == "enable")
        print(f"{action}d provider {provider.name}", file=out)
    if before.source == "env":
        print(
            "note: this provider came from the environment and is now managed by the CLI "
            "(source api): relay starts no longer change it",
            file=out,
        )


# -- users and tokens ------------------------------------------------------------------


async def _users(db: Database, args: argparse.Namespace, out: TextIO) -> None:
    if args.users_action == "create":
        user = await auth.create_user(db, args.name, admin=args.admin)
        role = ", an admin" if user.is_admin else ""
        print(f"created user {user.name} (id {user.id}){role}", file=out)
        args.audit = ("user.create", user.name, {"id": user.id, "admin": user.is_admin})
        return
    if args.users_action == "admin":
        admin = not args.revoke
        user, changed = await auth.set_admin(db, args.name, admin)
        if not changed:
            print(f"user {user.name} {'is' if admin else 'is not'} an admin already", file=out)
            return
        print(f"user {user.name} {'is now' if admin else 'is no longer'} an admin", file=out)
        args.audit = ("user.admin", user.name, {"id": user.id, "admin": admin})
        return
    users = await auth.list_users(db)
    if not users:
        print("no users", file=out)
        return
    rows = ([u.name, u.id, "admin" if u.is_admin else "user", _when(u.created_at)] for u in users)
    _table([["NAME", "ID", "ROLE", "CREATED"], *rows], out)


async def _tokens(db: Database, args: argparse.Namespace, out: TextIO) -> None:
    action = args.tokens_action
    if action == "create":
        token, row = await auth.create_token(db, args.user, args.expires_in)
        expiry = f"expires {_when(row.expires_at)}" if row.expires_at else "does not expire"
        # The token alone on stdout, so `TOKEN=$(relay tokens create ...)` works.
        _stderr(f"token {row.id} for user {row.user_name}, {expiry}; it is shown only this once:")
        print(token, file=out)
        detail = {"user": row.user_name, "expires_at": row.expires_at}
        args.audit = ("token.create", row.id, detail)
        return
    if action == "revoke":
        row = await auth.revoke_token(db, args.id)
        args.audit = ("token.revoke", row.id, {"user": row.user_name})
        print(
            f"revoked token {row.id} of user {row.user_name} at {_when(row.revoked_at)}", file=out
        )
        return
    rows = await auth.list_tokens(db, args.user)
    if not rows:
        print("no tokens", file=out)
        return
    now = datetime.now(UTC)
    table = [["ID", "USER", "STATUS", "CREATED", "EXPIRES", "LAST USED"]]
    for r in rows:
        table.append(
            [
                r.id,
                r.user_name,
                r.status(now),
                _when(r.created_at),
                _when(r.expires_at),
                _when(r.last_used_at),
            ]
        )
    _table(table, out)


# -- parser -----------------------------------------------------------------------------


def _add_provider_fields(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", help="upstream base URL (default: the type's)")
    parser.add_argument(
        "--key", action="append", metavar="KEY", help="a key of the pool (repeat for up to 5)"
    )
    parser.add_argument(
        "--keys-stdin",
        action="store_true",
        help="read the keys from stdin, one per line (keeps them out of the process list)",
    )
    parser.add_argument("--bedrock-region")
    parser.add_argument("--bedrock-access-key", metavar="ID")
    parser.add_argument("--bedrock-access-key-secret", metavar="SECRET")
    parser.add_argument("--bedrock-model")
    parser.add_argument("--bedrock-small-fast-model")
    parser.add_argument("--bedrock-base-url")
    parser.add_argument(
        "--responses-websocket",
        type=_bool_argument,
        metavar="true|false",
        help="openai: bridge the Responses API over WebSocket (default true)",
    )


def _bool_argument(text: str) -> bool:
    try:
        return parse_bool(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relay", description="A streaming AI gateway compatible with the Coder AI Gateway."
    )
    parser.add_argument("--version", action="version", version=f"relay {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the relay",
        description="Migrate the database, seed providers from the environment, and serve.",
        epilog=OLD_NAMES_NOTE
        + "\nProviders: CODER_AI_GATEWAY_PROVIDER_<N>_<KEY>, see docs/providers.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "--demo", action="store_true", help="serve the bundled mock upstream with a demo token"
    )
    add_flags(serve, OPTIONS)

    proxy = commands.add_parser(
        "proxy",
        help="run the AI Gateway Proxy alone (or print its CA certificate)",
        description="Serve only the AI Gateway Proxy (an HTTPS_PROXY), against the same "
        "database as relay serve. `relay proxy ca-cert` prints the CA certificate clients "
        "must trust (generated on first use). See docs/proxy.md.",
        epilog=OLD_NAMES_NOTE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    proxy.add_argument("proxy_action", nargs="?", choices=["ca-cert"], metavar="ca-cert")
    add_flags(proxy, OPTIONS)

    db_flags = argparse.ArgumentParser(add_help=False)
    add_flags(db_flags, _DB_OPTIONS)

    providers = commands.add_parser(
        "providers", help="list and change providers (keys are shown masked)"
    )
    p_actions = providers.add_subparsers(dest="providers_action", required=True, metavar="ACTION")
    p_actions.add_parser("list", parents=[db_flags], help="every provider, enabled or not")
    add = p_actions.add_parser("add", parents=[db_flags], help="add a provider (source api)")
    add.add_argument("name")
    add.add_argument("--type", required=True, choices=[t.value for t in ProviderType])
    _add_provider_fields(add)
    add.set_defaults(clear_keys=False)
    update = p_actions.add_parser("update", parents=[db_flags], help="change a provider")
    update.add_argument("name")
    _add_provider_fields(update)
    update.add_argument("--clear-keys", action="store_true", help="remove every key")
    for action in ("enable", "disable", "remove"):
        sub = p_actions.add_parser(action, parents=[db_flags], help=f"{action} a provider")
        sub.add_argument("name")

    users = commands.add_parser("users", help="create and list users; the admin role")
    u_actions = users.add_subparsers(dest="users_action", required=True, metavar="ACTION")
    create_user = u_actions.add_parser("create", parents=[db_flags], help="create a user")
    create_user.add_argument("name")
    create_user.add_argument(
        "--admin", action="store_true", help="with the admin role (the console, the admin API)"
    )
    u_actions.add_parser("list", parents=[db_flags], help="list users and their role")
    admin_role = u_actions.add_parser(
        "admin",
        parents=[db_flags],
        help="give a user the admin role (--revoke: take it away)",
        description="An admin signs in to the console (docs/console.md) and uses the admin API "
        "with their own relay token. Taking the role away ends their console sessions.",
    )
    admin_role.add_argument("name")
    admin_role.add_argument("--revoke", action="store_true", help="take the admin role away")

    tokens = commands.add_parser("tokens", help="create, list and revoke API tokens")
    t_actions = tokens.add_subparsers(dest="tokens_action", required=True, metavar="ACTION")
    create = t_actions.add_parser(
        "create", parents=[db_flags], help="create a token (printed once)"
    )
    create.add_argument("--user", required=True, help="the user's name")
    create.add_argument("--expires", metavar="DURATION", help="lifetime, e.g. 12h, 30d")
    listing = t_actions.add_parser("list", parents=[db_flags], help="list tokens")
    listing.add_argument("--user", help="only this user's tokens")
    revoke = t_actions.add_parser("revoke", parents=[db_flags], help="revoke a token")
    revoke.add_argument("id", help="the token's id (see tokens list)")

    commands.add_parser(
        "migrate",
        parents=[db_flags],
        help="apply the schema migrations and exit",
        description="Apply the schema migrations that are not applied yet (relay serve "
        "does it too; a fleet can migrate once before rolling out).",
    )

    usage = commands.add_parser(
        "usage",
        parents=[db_flags],
        help="requests, tokens, tool calls and cost per day, user, provider, model or client",
        description="Cost is in US dollars, from the prices stored with each usage row when it "
        "was recorded; usage recorded without a price is counted as unpriced, not as $0.",
    )
    usage.add_argument("--user", help="only this user")
    usage.add_argument("--provider", help="only this provider instance")
    usage.add_argument("--model", help="only this model (as recorded)")
    usage.add_argument("--client", help="only this client (claude-code, codex, ...)")
    usage.add_argument(
        "--since",
        metavar="WHEN",
        default="7d",
        help="from: a duration back (default 7d; e.g. 24h, 30d) or an RFC 3339 time / date",
    )
    usage.add_argument(
        "--until", metavar="WHEN", help="up to (excluded): a duration back or an RFC 3339 time"
    )
    usage.add_argument(
        "--group-by",
        metavar="DIMS",
        default="day,user,provider,model",
        help="comma-separated, from day, user, provider, model, client "
        "(default day,user,provider,model)",
    )
    _add_prices_parser(commands, db_flags)
    _add_budget_parsers(commands, db_flags)
    return parser


def _add_budget_parsers(commands: Any, db_flags: argparse.ArgumentParser) -> None:
    groups = commands.add_parser("groups", help="groups of users (for budgets)")
    g_actions = groups.add_subparsers(dest="groups_action", required=True, metavar="ACTION")
    g_actions.add_parser("list", parents=[db_flags], help="groups and their members")
    for action, text in (("create", "create a group"), ("delete", "delete a group")):
        sub = g_actions.add_parser(action, parents=[db_flags], help=text)
        sub.add_argument("name")
    for action, text in (
        ("add", "add a user to a group"),
        ("remove", "remove a user from a group"),
    ):
        sub = g_actions.add_parser(action, parents=[db_flags], help=text)
        sub.add_argument("name", help="the group")
        sub.add_argument("user", help="the user's name")

    budgets = commands.add_parser(
        "budgets",
        help="spend limits per user, group or relay token, checked before a request goes upstream",
        description="A budget limits what a user, a group's members together, or a relay token "
        "may spend per calendar period (UTC), on every model or one. Spent: new requests are "
        "refused (429) until the period resets; requests in flight finish. "
        "See docs/cost.md.",
    )
    b_actions = budgets.add_subparsers(dest="budgets_action", required=True, metavar="ACTION")
    b_actions.add_parser("list", parents=[db_flags], help="budgets and what each has spent")
    set_ = b_actions.add_parser("set", parents=[db_flags], help="create or change a budget")
    set_.add_argument("name")
    who = set_.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="a user's name")
    who.add_argument("--group", help="a group's name: its members' spend together")
    who.add_argument("--token", metavar="ID", help="a relay token's id (see tokens list)")
    set_.add_argument("--limit", required=True, metavar="USD", help="per period, e.g. 100 or 12.50")
    set_.add_argument("--period", choices=["day", "week", "month"], default="month")
    set_.add_argument("--model", help="only this model family (claude-sonnet-4-5)")
    set_.add_argument(
        "--soft", type=int, default=80, metavar="PERCENT", help="warn from this share (default 80)"
    )
    remove = b_actions.add_parser("remove", parents=[db_flags], help="remove a budget")
    remove.add_argument("name")


def _add_prices_parser(commands: Any, db_flags: argparse.ArgumentParser) -> None:
    prices = commands.add_parser(
        "prices",
        help="the price book: list, set, import, remove prices; list unpriced models",
        description="Prices in US dollars per million tokens (stored as integer micro-dollars). "
        "A price applies from its --from date; usage is priced once, when recorded. "
        "See docs/cost.md for how models are matched.",
    )
    actions = prices.add_subparsers(dest="prices_action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=[db_flags], help="the prices in force")
    listing.add_argument("--all", action="store_true", help="every dated price, past and future")
    set_ = actions.add_parser("set", parents=[db_flags], help="add or replace one price")
    set_.add_argument("provider_type", help="anthropic, openai, bedrock, ...")
    set_.add_argument("model", help="a model family (claude-sonnet-4-5), or a prefix ending in *")
    set_.add_argument("--input", required=True, metavar="USD", help="per million input tokens")
    set_.add_argument("--output", required=True, metavar="USD", help="per million output tokens")
    set_.add_argument("--cache-read", metavar="USD", help="default: the input price")
    set_.add_argument("--cache-write", metavar="USD", help="default: the input price")
    set_.add_argument("--cache-write-1h", metavar="USD", help="default: the cache write price")
    set_.add_argument(
        "--reasoning", metavar="USD", help="reasoning tokens priced apart (default: as output)"
    )
    set_.add_argument(
        "--from", dest="effective_from_text", metavar="YYYY-MM-DD", help="default: today (UTC)"
    )
    imp = actions.add_parser(
        "import", parents=[db_flags], help="add or replace prices from a JSON file"
    )
    imp.add_argument("file", help="same format as relay/pricing/default_prices.json")
    remove = actions.add_parser("remove", parents=[db_flags], help="remove a model's price(s)")
    remove.add_argument("provider_type")
    remove.add_argument("model")
    remove.add_argument(
        "--from", dest="effective_from_text", metavar="YYYY-MM-DD", help="only this one"
    )
    unpriced = actions.add_parser(
        "unpriced", parents=[db_flags], help="models whose usage was recorded without a price"
    )
    unpriced.add_argument("--since", metavar="DURATION", default="30d", help="default 30d")


async def _usage(db: Database, args: argparse.Namespace, out: TextIO) -> None:
    from relay.admin.usage import format_usage_table, usage_report

    rows = await usage_report(
        db,
        user=args.user,
        provider=args.provider,
        since=args.since_at,
        until=args.until_at,
        model=args.model,
        client=args.client,
        group_by=args.group_by_dims,
    )
    out.write(format_usage_table(rows, args.group_by_dims))


async def _prices(db: Database, args: argparse.Namespace, out: TextIO) -> None:
    from relay.pricing import store as prices
    from relay.pricing.book import Price, format_dollars

    action = args.prices_action
    if action == "set":
        await prices.set_prices(db, [args.price])
        print(f"set {_price_line(args.price)}", file=out)
        return
    if action == "import":
        await prices.set_prices(db, args.imported)
        print(f"imported {len(args.imported)} price(s) from {args.file}", file=out)
        return
    if action == "remove":
        removed = await prices.remove_price(db, args.provider_type, args.model, args.effective_from)
        if not removed:
            raise CommandError(f"no price for {args.provider_type} {args.model}")
        print(f"removed {removed} price(s) of {args.provider_type} {args.model}", file=out)
        return
    if action == "unpriced":
        since = datetime.now(UTC) - timedelta(seconds=args.since_seconds)
        rows = await prices.unpriced_models(db, since)
        if not rows:
            print("every recorded usage in that period was priced", file=out)
            return
        table = [["TYPE", "MODEL", "USAGES", "TOKENS", "LAST SEEN"]]
        for r in rows:
            table.append(
                [
                    r["provider_type"],
                    r["model"],
                    str(r["usages"]),
                    f"{r['tokens']:,}",
                    _when(r["last_seen"]),
                ]
            )
        _table(table, out)
        return
    listed: list[Price] = await prices.load_prices(db)
    if not args.all:
        today = datetime.now(UTC).date()
        current: dict[tuple[str, str], Price] = {}
        for price in listed:  # ordered by effective_from within a model
            if price.effective_from <= today or (price.provider_type, price.model) not in current:
                current[(price.provider_type, price.model)] = price
        listed = list(current.values())
    table = [
        [
            "TYPE",
            "MODEL",
            "FROM",
            "INPUT",
            "OUTPUT",
            "CACHE READ",
            "CACHE WRITE",
            "1H WRITE",
            "REASONING",
            "SOURCE",
        ]
    ]
    for price in listed:
        table.append(
            [
                price.provider_type,
                price.model,
                price.effective_from.isoformat(),
                *(
                    format_dollars(value, 6).rstrip("0").rstrip(".") if value is not None else "-"
                    for value in (
                        price.input,
                        price.output,
                        price.cache_read,
                        price.cache_write,
                        price.cache_write_1h,
                        price.reasoning,
                    )
                ),
                price.source,
            ]
        )
    print(
        f"USD per million tokens (default book checked {prices.default_prices_checked()})", file=out
    )
    _table(table, out)


def _price_line(price: object) -> str:
    from relay.pricing.book import Price, format_dollars

    assert isinstance(price, Price)
    return (
        f"{price.provider_type} {price.model} from {price.effective_from}: input "
        f"${format_dollars(price.input)}, output ${format_dollars(price.output)} per million tokens"
    )


async def _groups(db: Database, args: argparse.Namespace, out: TextIO) -> None:
    from relay.budgets import store as budgets

    action = args.groups_action
    if action == "create":
        await budgets.create_group(db, args.name)
        print(f"created group {args.name}", file=out)
    elif action == "delete":
        await budgets.delete_group(db, args.name)
        print(f"deleted group {args.name} (and its budgets)", file=out)
    elif action == "add":
        added = await budgets.add_member(db, args.name, args.user)
        print(f"{'added' if added else 'already in'}: {args.user} in {args.name}", file=out)
    elif action == "remove":
        removed = await budgets.remove_member(db, args.name, args.user)
        print(f"{'removed' if removed else 'not in'}: {args.user} from {args.name}", file=out)
    else:
        groups = await budgets.list_groups(db)
        if not groups:
            print("no groups", file=out)
            return
        _table([["GROUP", "MEMBERS"], *([name, ", ".join(m) or "-"] for name, m in groups)], out)


async def _budgets(db: Database, args: argparse.Namespace, out: TextIO) -> None:
    from relay.budgets import store as budgets
    from relay.pricing.book import format_dollars, parse_dollars

    action = args.budgets_action
    if action == "set":
        try:
            limit = parse_dollars(args.limit)
        except ValueError as exc:
            raise CommandError(f"--limit: {exc}") from None
        await budgets.set_budget(
            db,
            args.name,
            user=args.user,
            group=args.group,
            api_key_id=args.token,
            limit_micros=limit,
            period=args.period,
            model=args.model,
            soft_percent=args.soft,
        )
        print(f"set budget {args.name}: ${format_dollars(limit)} per {args.period}", file=out)
        return
    if action == "remove":
        await budgets.remove_budget(db, args.name)
        print(f"removed budget {args.name}", file=out)
        return
    rows = await budgets.budgets_with_spend(db)
    if not rows:
        print("no budgets", file=out)
        return
    table = [["BUDGET", "FOR", "MODEL", "PERIOD", "LIMIT $", "SPENT $", "USED", "SOFT"]]
    for b, spent in rows:
        table.append(
            [
                b.name,
                f"{b.scope} {b.subject_name}",
                b.model or "(all)",
                b.period,
                format_dollars(b.limit_micros),
                format_dollars(spent),
                f"{spent * 100 // b.limit_micros}%",
                f"{b.soft_percent}%",
            ]
        )
    _table(table, out)


async def _migrate(db: Database, args: argparse.Namespace, out: TextIO) -> None:
    # open_admin_database has applied them; say where the schema stands.
    version = await db.fetchval("SELECT max(version) FROM schema_migrations")
    print(f"database schema at migration {version}", file=out)


_ADMIN: dict[str, Callable[[Database, argparse.Namespace, TextIO], Awaitable[None]]] = {
    "migrate": _migrate,
    "providers": _providers,
    "users": _users,
    "tokens": _tokens,
    "usage": _usage,
    "prices": _prices,
    "groups": _groups,
    "budgets": _budgets,
}


def _serve(options: Options, demo: bool) -> None:
    from relay.server import serve  # the server pulls in much; only `serve` needs it

    if inspect.iscoroutinefunction(serve):
        trio.run(functools.partial(serve, options, demo=demo))
    else:
        serve(options, demo=demo)


def _proxy(options: Options, action: str | None) -> None:
    if action == "ca-cert":
        from relay.proxy.ca import load_or_create_ca

        sys.stdout.write(load_or_create_ca(options).cert_pem.decode("ascii"))
        return
    from relay.observe.logs import configure_logging
    from relay.proxy.service import run_proxy

    configure_logging(structured=options.structured_logging)
    providers_from_env(os.environ, lambda _line: None, options)
    trio.run(functools.partial(run_proxy, options, env=os.environ))


def _check_arguments(args: argparse.Namespace) -> None:
    """What can be refused without a database, before starting one."""
    if args.command == "tokens" and args.tokens_action == "create":
        try:
            args.expires_in = parse_duration(args.expires) if args.expires else None
        except ValueError as exc:
            raise CommandError(f"--expires: {exc}") from None
    if args.command == "usage":
        from relay.admin.usage import parse_group_by

        args.since_at = _point_in_time(args.since, "--since")
        args.until_at = _point_in_time(args.until, "--until") if args.until else None
        try:
            args.group_by_dims = parse_group_by(args.group_by)
        except ValueError as exc:
            raise CommandError(f"--group-by: {exc}") from None
    if args.command == "prices":
        _check_prices_arguments(args)
    if args.command == "providers" and args.providers_action == "update":
        if not (args.keys_stdin or _provider_changes(args)):
            raise CommandError("nothing to update: give at least one option")


def _point_in_time(text: str, flag: str) -> datetime:
    """A duration back from now (``7d``), or an RFC 3339 time or date (UTC when naive)."""
    try:
        return datetime.now(UTC) - timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(
            f"{flag}: {text!r} is neither a duration (24h, 30d) nor a time (2026-01-31)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _check_prices_arguments(args: argparse.Namespace) -> None:
    import json
    from datetime import date

    from relay.pricing.book import Price, parse_dollars
    from relay.pricing.store import prices_from_document

    action = args.prices_action
    if action in ("set", "remove"):
        try:
            since = getattr(args, "effective_from_text", None)
            args.effective_from = date.fromisoformat(since) if since else None
        except ValueError:
            raise CommandError(f"--from: not a date (YYYY-MM-DD): {since!r}") from None
    if action == "set":
        values: dict[str, int | None] = {}
        for name in ("input", "output", "cache_read", "cache_write", "cache_write_1h", "reasoning"):
            text = getattr(args, name)
            try:
                values[name] = parse_dollars(text) if text is not None else None
            except ValueError as exc:
                raise CommandError(f"--{name.replace('_', '-')}: {exc}") from None
        args.price = Price(
            provider_type=args.provider_type,
            model=args.model.strip().lower(),
            effective_from=args.effective_from or datetime.now(UTC).date(),
            source="admin",
            **values,  # type: ignore[arg-type]
        )
    elif action == "import":
        try:
            with open(args.file, encoding="utf-8") as f:
                document = json.load(f)
        except (OSError, ValueError) as exc:
            raise CommandError(f"cannot read {args.file}: {exc}") from None
        args.imported = prices_from_document(document, source="admin", where=args.file)
    elif action == "unpriced":
        try:
            args.since_seconds = parse_duration(args.since)
        except ValueError as exc:
            raise CommandError(f"--since: {exc}") from None


#: The admin commands that change something, each audited once it succeeded
#: (``audit_log``, via "cli"; docs/console.md). The option values kept in the
#: entry's detail, per command: never a key, a secret or a token.
_AUDITED: dict[str, tuple[frozenset[str], tuple[str, ...]]] = {
    "providers": (
        frozenset({"add", "update", "enable", "disable", "remove"}),
        (
            "type",
            "base_url",
            "bedrock_region",
            "bedrock_model",
            "bedrock_small_fast_model",
            "bedrock_base_url",
            "responses_websocket",
        ),
    ),
    "groups": (frozenset({"create", "delete", "add", "remove"}), ("user",)),
    "budgets": (
        frozenset({"set", "remove"}),
        ("user", "group", "token", "limit", "period", "model", "soft"),
    ),
    "prices": (
        frozenset({"set", "import", "remove"}),
        (
            "input",
            "output",
            "cache_read",
            "cache_write",
            "cache_write_1h",
            "reasoning",
            "effective_from_text",
            "file",
        ),
    ),
}


def os_user() -> str:
    """Who runs the command, as the operating system knows them (the CLI's audit actor)."""
    import getpass

    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (a bare container)
        return f"uid {os.getuid()}"


def cli_audit_entry(args: argparse.Namespace) -> tuple[str, str, dict[str, Any]] | None:
    """``(action, target, detail)`` of a change a command made, or None for a reading."""
    explicit: tuple[str, str, dict[str, Any]] | None = getattr(args, "audit", None)
    if explicit is not None:
        return explicit
    audited = _AUDITED.get(args.command)
    action = getattr(args, f"{args.command}_action", None)
    if audited is None or action not in audited[0]:
        return None
    fields = audited[1]
    detail = {f: getattr(args, f) for f in fields if getattr(args, f, None) is not None}
    if args.command == "providers":
        # Which secrets changed, never their values.
        if getattr(args, "key", None) or getattr(args, "keys_stdin", False):
            detail["keys"] = "replaced"
        elif getattr(args, "clear_keys", False):
            detail["keys"] = "cleared"
        if getattr(args, "bedrock_access_key", None) or getattr(
            args, "bedrock_access_key_secret", None
        ):
            detail["bedrock_credentials"] = "replaced"
    if args.command == "prices":
        target = args.file if action == "import" else f"{args.provider_type}/{args.model}"
    else:
        target = args.name
    noun = {"providers": "provider", "groups": "group", "budgets": "budget", "prices": "price"}
    return f"{noun[args.command]}.{action}", target, detail


async def _run_admin(options: Options, args: argparse.Namespace) -> None:
    _check_arguments(args)
    try:
        async with open_admin_database(options) as db:
            await _ADMIN[args.command](db, args, sys.stdout)
            entry = cli_audit_entry(args)
            if entry is not None:
                from relay.console.audit import record_audit

                await record_audit(db, os_user(), None, "cli", *entry)
    except Exception as raised:
        # The database going away is expected here: one line, not a traceback.
        lost = unavailable(sole_exception(raised))
        if lost is None:
            raise
        raise lost from raised


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        options = load_options(os.environ, args, warn=_stderr)
        if args.command == "serve":
            # Fail before starting anything; warnings are printed once, by the server.
            providers_from_env(os.environ, lambda _line: None, options)
            _serve(options, args.demo)
        elif args.command == "proxy":
            _proxy(options, args.proxy_action)
        else:
            trio.run(_run_admin, options, args)
    except Exception as raised:
        # Errors raised inside nurseries arrive in groups; anything else is a bug.
        error = relay_error(raised)
        if error is None:
            raise
        _stderr(f"relay: {error.report()}")
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
