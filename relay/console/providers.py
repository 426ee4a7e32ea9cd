"""The console's provider changes: list, add, update, enable, disable, remove.

Through ``relay.providers.store``, as ``relay providers …`` does; the
``providers`` trigger announces each change on ``relay_config`` and every
relay process reloads its registry (a disabled provider is refused at once).
Keys and the AWS secret are never sent back: listings carry their masks, an
update that leaves ``keys`` out keeps them, a mask sent as a key is refused,
and no error message quotes a key.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from typing import Annotated, Any
from urllib.parse import urlsplit

import msgspec

from relay.console.changes import Key, Keys, Short, Url, audit_change, refused
from relay.console.http import BadRequest, ConsoleRequest, NotFound, Response, Route, json_response
from relay.errors import CommandError
from relay.pricing import store as prices
from relay.pricing.book import Price, format_dollars, parse_dollars
from relay.providers import store as providers
from relay.providers.types import (
    DEFAULT_BASE_URLS,
    DEFAULT_BEDROCK_MODEL,
    DEFAULT_BEDROCK_SMALL_FAST_MODEL,
    Provider,
    ProviderType,
    mask_secret,
)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MASK = "…"  # what mask_secret puts in a mask: a key holding it was pasted back from a listing


# --- providers ----------------------------------------------------------------------------


class ProviderFields(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The fields an add or an update may set; a field left out is left as it is."""

    base_url: Url | None = None
    keys: Keys | None = None
    bedrock_region: Short | None = None
    bedrock_access_key: Short | None = None
    bedrock_access_key_secret: Key | None = None
    bedrock_model: Short | None = None
    bedrock_small_fast_model: Short | None = None
    bedrock_base_url: Url | None = None
    responses_websocket: bool | None = None


class ProviderAdd(ProviderFields, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(max_length=63)] = ""
    type: Annotated[str, msgspec.Meta(max_length=32)] = ""


def provider_view(p: Provider) -> dict[str, Any]:
    """A provider as the console shows it: every key and the AWS secret only as masks."""
    return {
        "name": p.name,
        "type": p.type.value,
        "source": p.source,
        "enabled": p.enabled,
        "endpoint": p.endpoint,
        "base_url": p.base_url,
        "keys": list(p.masked_keys()),
        "bedrock_region": p.bedrock_region,
        "bedrock_access_key": mask_secret(p.bedrock_access_key),
        "bedrock_access_key_secret_set": bool(p.bedrock_access_key_secret),
        "bedrock_model": p.bedrock_model,
        "bedrock_small_fast_model": p.bedrock_small_fast_model,
        "bedrock_base_url": p.bedrock_base_url,
        "responses_websocket": p.responses_websocket,
        "credentials": p.credential_hint(),
    }


def _check_url(field: str, value: str) -> str:
    value = value.strip()
    if not value:
        return value
    if any(c.isspace() or ord(c) < 32 for c in value):
        raise BadRequest(f"{field}: a URL has no spaces or control characters")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise BadRequest(f"{field}: not a URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest(f"{field}: must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise BadRequest(f"{field}: no credentials in the URL (give keys as keys)")
    if parts.query or parts.fragment:
        raise BadRequest(f"{field}: no query or fragment in a base URL")
    del port
    return value


def _changes(fields: ProviderFields) -> dict[str, Any]:
    """The fields given, checked; keys as a tuple. Never quotes a secret in an error."""
    changes: dict[str, Any] = {}
    for name in fields.__struct_fields__:
        value = getattr(fields, name)
        if value is None or name in ("name", "type"):
            continue
        if name in ("base_url", "bedrock_base_url"):
            value = _check_url(name, value)
        elif name == "keys":
            keys = [k.strip() for k in value]
            for i, key in enumerate(keys):
                if _MASK in key:
                    raise BadRequest(
                        f"keys: key {i} is a mask, not a key (leave keys out to keep them)"
                    )
                if not key or _CONTROL.search(key):
                    # A key goes into a request header upstream: no CR, LF or other control.
                    raise BadRequest(f"keys: key {i} is empty or holds a control character")
            value = tuple(keys)
        elif isinstance(value, str):
            value = value.strip()
            if name in ("bedrock_access_key", "bedrock_access_key_secret") and _MASK in value:
                raise BadRequest(f"{name}: that is a mask, not the value (leave it out to keep it)")
            if _CONTROL.search(value):
                raise BadRequest(f"{name}: no control characters")
        changes[name] = value
    return changes


def _secret_detail(changes: dict[str, Any]) -> dict[str, Any]:
    """What an audit entry says of a change: the field names, secrets as masks."""
    detail: dict[str, Any] = {}
    for name, value in changes.items():
        if name == "keys":
            detail["keys"] = [mask_secret(k) for k in value]
        elif name == "bedrock_access_key":
            detail[name] = mask_secret(value)
        elif name == "bedrock_access_key_secret":
            detail[name] = "(changed)" if value else "(cleared)"
        else:
            detail[name] = value
    return detail


async def _provider(req: ConsoleRequest, name: str) -> Provider:
    provider = await providers.get_provider(req.services.db, name)
    if provider is None:
        raise NotFound(f"no provider named {name!r}")
    return provider


async def list_providers(req: ConsoleRequest) -> Response:
    rows = await providers.list_providers(req.services.db)
    return json_response({"providers": [provider_view(p) for p in rows]})


async def add_provider(req: ConsoleRequest) -> Response:
    body = await req.json(ProviderAdd)
    try:
        ptype = ProviderType(body.type)
    except ValueError:
        types = ", ".join(t.value for t in ProviderType)
        raise BadRequest(f"type: must be one of {types}") from None
    if not body.name:
        raise BadRequest("name: required")
    fields = _changes(body)
    # The CLI's defaults (relay providers add).
    if not fields.get("base_url"):
        fields["base_url"] = DEFAULT_BASE_URLS[ptype]
    if ptype is ProviderType.BEDROCK:
        fields.setdefault("bedrock_model", DEFAULT_BEDROCK_MODEL)
        fields.setdefault("bedrock_small_fast_model", DEFAULT_BEDROCK_SMALL_FAST_MODEL)
    try:
        provider = await providers.add_provider(
            req.services.db, Provider(name=body.name, type=ptype, **fields)
        )
    except CommandError as exc:
        return refused(exc)
    await audit_change(
        req, "provider.add", provider.name, {"type": ptype.value, **_secret_detail(fields)}
    )
    return json_response({"provider": provider_view(provider)}, 201)


async def update_provider(req: ConsoleRequest, name: str) -> Response:
    body = await req.json(ProviderFields)
    changes = _changes(body)
    if not changes:
        raise BadRequest("nothing to update: give at least one field")
    await _provider(req, name)
    try:
        provider = await providers.update_provider(req.services.db, name, **changes)
    except CommandError as exc:
        return refused(exc)
    await audit_change(req, "provider.update", name, _secret_detail(changes))
    return json_response({"provider": provider_view(provider)})


def _set_enabled(enabled: bool) -> Callable[[ConsoleRequest, str], Awaitable[Response]]:
    async def handler(req: ConsoleRequest, name: str) -> Response:
        before = await _provider(req, name)
        try:
            provider = await providers.set_provider_enabled(req.services.db, name, enabled)
        except CommandError as exc:
            return refused(exc)
        if before.enabled != enabled:
            await audit_change(req, "provider.enable" if enabled else "provider.disable", name, {})
        return json_response({"provider": provider_view(provider)})

    return handler


async def remove_provider(req: ConsoleRequest, name: str) -> Response:
    try:
        removed = await providers.remove_provider(req.services.db, name)
    except CommandError as exc:
        return refused(exc)
    await audit_change(req, "provider.remove", name, {"type": removed.type.value})
    return json_response({"removed": name, "source": removed.source})


# --- prices ---------------------------------------------------------------------------------

_Dollars = Annotated[str, msgspec.Meta(max_length=32)]
_PRICE_FIELDS = ("input", "output", "cache_read", "cache_write", "cache_write_1h", "reasoning")


class PriceSet(msgspec.Struct, forbid_unknown_fields=True):
    """One price (US dollars per million tokens), as ``relay prices set`` takes it."""

    provider_type: Annotated[str, msgspec.Meta(max_length=32)]
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    input: _Dollars
    output: _Dollars
    cache_read: _Dollars | None = None
    cache_write: _Dollars | None = None
    cache_write_1h: _Dollars | None = None
    reasoning: _Dollars | None = None
    effective_from: Annotated[str, msgspec.Meta(max_length=10)] | None = None  # YYYY-MM-DD


class PriceRemove(msgspec.Struct, forbid_unknown_fields=True):
    provider_type: Annotated[str, msgspec.Meta(max_length=32)]
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    effective_from: Annotated[str, msgspec.Meta(max_length=10)] | None = None


def _price_key(provider_type: str, model: str) -> tuple[str, str]:
    if provider_type not in {t.value for t in ProviderType}:
        raise BadRequest(f"provider_type: one of {', '.join(t.value for t in ProviderType)}")
    model = model.strip().lower()
    if not model or any(c.isspace() or ord(c) < 32 for c in model) or "*" in model[:-1]:
        raise BadRequest("model: a model name, or a prefix ending in * (no spaces)")
    return provider_type, model


def _day(text: str | None) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"effective_from: not a date (YYYY-MM-DD): {text!r}") from None


def price_view(price: Price) -> dict[str, Any]:
    view: dict[str, Any] = {
        "provider_type": price.provider_type,
        "model": price.model,
        "effective_from": price.effective_from,
        "source": price.source,
    }
    for name in _PRICE_FIELDS:
        view[f"{name}_micros"] = getattr(price, name)
    return view


async def list_prices(req: ConsoleRequest) -> Response:
    """The prices in force today (``?all=true``: every dated price, past and future)."""
    listed = await prices.load_prices(req.services.db)
    if req.query.get("all") not in ("true", "1"):
        today = datetime.now(UTC).date()
        current: dict[tuple[str, str], Price] = {}
        for price in listed:  # ordered by effective_from within a model
            key = (price.provider_type, price.model)
            if price.effective_from <= today or key not in current:
                current[key] = price
        listed = list(current.values())
    return json_response({"prices": [price_view(p) for p in listed]})


async def set_price(req: ConsoleRequest) -> Response:
    body = await req.json(PriceSet)
    provider_type, model = _price_key(body.provider_type, body.model)
    values: dict[str, int | None] = {}
    for name in _PRICE_FIELDS:
        text = getattr(body, name)
        try:
            values[name] = parse_dollars(text) if text not in (None, "") else None
        except ValueError as exc:
            raise BadRequest(f"{name}: {exc}") from None
    input_micros, output_micros = values.pop("input"), values.pop("output")
    assert input_micros is not None and output_micros is not None
    price = Price(
        provider_type=provider_type,
        model=model,
        effective_from=_day(body.effective_from) or datetime.now(UTC).date(),
        input=input_micros,
        output=output_micros,
        source="admin",
        **values,
    )
    await prices.set_prices(req.services.db, [price])
    detail = {
        "from": price.effective_from.isoformat(),
        **{
            n: format_dollars(getattr(price, n))
            for n in _PRICE_FIELDS
            if getattr(price, n) is not None
        },
    }
    await audit_change(req, "price.set", f"{provider_type}/{model}", detail)
    return json_response({"price": price_view(price)})


async def remove_price(req: ConsoleRequest) -> Response:
    body = await req.json(PriceRemove)
    provider_type, model = _price_key(body.provider_type, body.model)
    since = _day(body.effective_from)
    removed = await prices.remove_price(req.services.db, provider_type, model, since)
    if not removed:
        raise NotFound(f"no price for {provider_type} {model}")
    detail = {"from": since.isoformat()} if since else {}
    await audit_change(
        req, "price.remove", f"{provider_type}/{model}", {**detail, "removed": removed}
    )
    return json_response({"removed": removed})


PRICE_ROUTES: list[Route] = [
    Route("GET", "api/prices", list_prices),
    Route("POST", "api/prices", set_price),
    Route("POST", "api/prices/remove", remove_price),
]


ROUTES: list[Route] = [
    Route("GET", "api/providers", list_providers),
    Route("POST", "api/providers", add_provider),
    Route("POST", "api/providers/{name}", update_provider),
    Route("POST", "api/providers/{name}/enable", _set_enabled(True)),
    Route("POST", "api/providers/{name}/disable", _set_enabled(False)),
    Route("POST", "api/providers/{name}/remove", remove_provider),
    *PRICE_ROUTES,
]
