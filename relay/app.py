"""The relay's ASGI application.

``create_app()`` is the factory for hypercorn (``hypercorn -k trio -w N
'relay.app:create_app()'``); ``relay serve`` runs the same app in-process.
The lifespan task owns every long-lived service (database bridge, provider
registry, token cache, recorder nursery, upstream pools), so each hypercorn
worker migrates, seeds and serves on its own and they all share PostgreSQL.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

import trio

from relay.access import (
    BYOK_DISABLED_BODY,
    read_client_credential,
    upstream_request_headers,
)
from relay.asgi import (
    BodyTooLarge,
    ClientDisconnected,
    Receive,
    Scope,
    Send,
    read_body,
    send_response,
)
from relay.intercept.apis import SPECS
from relay.intercept.base import Outcome, UpstreamCall, relay_interception, send_error
from relay.intercept.passthrough import relay_passthrough
from relay.options import Options, load_options
from relay.providers.types import Provider, mask_secret
from relay.record.events import InterceptionMeta, client_session_id, detect_client, records_for
from relay.routes import (
    RouteKind,
    error_style_for,
    join_url,
    match_route,
    split_gateway_path,
    upstream_path,
)
from relay.services import Services, open_services
from relay.wire.common import InvalidRequestBody

log = logging.getLogger("relay.app")


def provider_auth_headers(provider: Provider) -> list[tuple[bytes, bytes]]:
    """The provider's credential, in the header its API expects."""
    if not provider.keys:
        return []
    key = provider.keys[0].encode("latin-1")
    if provider.type == "anthropic":
        return [(b"x-api-key", key)]
    return [(b"authorization", b"Bearer " + key)]


class RelayApp:
    def __init__(
        self, options: Options | None = None, env: Mapping[str, str] | None = None
    ) -> None:
        self.options = options
        self.env = env
        self.services: Services | None = None
        self._ready = trio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        env = self.env if self.env is not None else os.environ
        options = self.options or load_options(env)
        try:
            async with open_services(options, env) as services:
                self.services = services
                self._ready.set()
                await send({"type": "lifespan.startup.complete"})
                await receive()  # lifespan.shutdown: hypercorn has drained the requests
                self.services = None
        except Exception as exc:
            log.exception("relay failed to start")
            if not self._ready.is_set():
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            raise
        await send({"type": "lifespan.shutdown.complete"})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if path == "/healthz":
            await send_response(send, 200, b'{"status":"ok"}')
            return
        services = self.services
        split = split_gateway_path(path)
        if split is None or services is None:
            style = error_style_for(None, path)
            status = 404 if services is not None else 503
            await send_error(send, style, status, f"route not supported: {method} {path}")
            return
        name, api_path = split
        provider = services.providers.get(name)
        style = error_style_for(provider.type if provider else None, api_path)
        if provider is None:
            await send_error(send, style, 404, f"unknown provider: {name}")
            return
        kind = match_route(provider.type, method, api_path)
        if kind is None:
            await send_error(send, style, 404, f"route not supported: {method} {api_path}")
            return
        headers = scope["headers"]
        credential = read_client_credential(headers)
        principal = (
            await services.tokens.verify(credential.relay_token) if credential.relay_token else None
        )
        if principal is None:
            await send_error(send, style, 401, "invalid or missing relay API token")
            return
        if credential.byok and not services.options.allow_byok:
            await send_response(send, 403, BYOK_DISABLED_BODY)
            return
        upstream_headers = upstream_request_headers(
            headers, byok=credential.byok, provider_auth=provider_auth_headers(provider)
        )
        client = services.upstreams.get(provider.name, provider.base_url)
        url = join_url(
            provider.base_url,
            upstream_path(provider.type, api_path),
            scope.get("query_string", b""),
        )
        try:
            if kind is RouteKind.PASSTHROUGH:
                await relay_passthrough(
                    send, receive, client, method, url, upstream_headers, headers, style
                )
                return
            spec = SPECS.get(kind)
            if spec is None:
                await send_error(
                    send, style, 501, f"route not implemented yet: {method} {api_path}"
                )
                return
            await self._intercept(
                scope,
                receive,
                send,
                services,
                provider,
                spec,
                kind,
                api_path,
                principal,
                credential,
                upstream_headers,
                client,
                url,
            )
        except ClientDisconnected:
            return

    async def _intercept(
        self,
        scope,
        receive,
        send,
        services,
        provider,
        spec,
        kind,
        api_path,
        principal,
        credential,
        upstream_headers,
        client,
        url,
    ) -> None:  # type: ignore[no-untyped-def]
        started_at = datetime.now(UTC)
        try:
            body = await read_body(receive, services.options.max_request_body)
        except BodyTooLarge as exc:
            await send_error(send, spec.error_style, 413, str(exc))
            return
        try:
            info = spec.parse_request(body)
        except InvalidRequestBody as exc:
            await send_error(send, spec.error_style, 400, str(exc))
            return
        upstream_body, drop_injected = (
            spec.prepare_body(body, info) if spec.prepare_body else (body, False)
        )
        call = UpstreamCall(client, "POST", url, upstream_headers, upstream_body)
        outcome = Outcome()
        try:
            await relay_interception(
                send,
                receive,
                call,
                spec,
                info,
                outcome,
                drop_injected=drop_injected,
                keepalive_interval=services.options.keepalive_interval,
            )
        finally:
            headers = scope["headers"]
            meta = InterceptionMeta(
                initiator_id=uuid.UUID(principal.user_id),
                api_key_id=principal.api_key_id,
                provider_name=provider.name,
                provider_type=str(provider.type),
                model=info.model or "",
                route=api_path,
                started_at=started_at,
                client=detect_client(headers),
                client_session_id=client_session_id(headers, info.metadata_user_id),
                user_agent=_header(headers, b"user-agent"),
                credential_kind="byok" if credential.byok else "centralized",
                credential_hint=mask_secret(
                    credential.byok_secret or (provider.keys[0] if provider.keys else "")
                )
                or None,
            )
            error = (
                (outcome.error_type, outcome.error_message or "") if outcome.error_type else None
            )
            services.recorder.record(
                records_for(
                    meta,
                    outcome.facts,
                    info.last_user_prompt,
                    outcome.status,
                    error,
                    ended_at=datetime.now(UTC),
                )
            )


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for k, v in headers:
        if k == name:
            return v.decode("latin-1")
    return None


def create_app(options: Options | None = None, env: Mapping[str, str] | None = None) -> RelayApp:
    """ASGI factory: ``hypercorn -k trio 'relay.app:create_app()'``."""
    return RelayApp(options, env)
