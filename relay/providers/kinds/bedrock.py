"""``bedrock``: Anthropic models on AWS Bedrock.

Anthropic clients (``/v1/messages``) are translated to InvokeModel[WithResponseStream]
and back; Bedrock clients (``/model/{id}/invoke[-with-response-stream]``) go
through unchanged, re-signed. The translation lives in ``relay.intercept.bedrock``;
this kind plugs it into the shell.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from relay.intercept.apis import MESSAGES
from relay.intercept.base import Exchange
from relay.intercept.bedrock.handler import BedrockAuths, prepare_bedrock_exchange
from relay.providers.kinds.base import ExchangeContext, ProviderKind
from relay.providers.types import Provider
from relay.routes import RouteKind, intercepted


class BedrockKind(ProviderKind):
    type = "bedrock"
    error_style = "anthropic"
    # Not yet: each round would be translated and signed again, and the answer is an
    # AWS event stream (docs/mcp.md).
    injects_tools = False
    intercepted = (
        intercepted("POST", r"/v1/messages", RouteKind.MESSAGES),
        intercepted("POST", r"/model/[^/]+/invoke", RouteKind.BEDROCK_INVOKE),
        intercepted(
            "POST", r"/model/[^/]+/invoke-with-response-stream", RouteKind.BEDROCK_INVOKE_STREAM
        ),
    )
    # Bedrock's native routes carry an Anthropic Messages body (Bedrock's dialect).
    specs = {
        RouteKind.MESSAGES: MESSAGES,
        RouteKind.BEDROCK_INVOKE: MESSAGES,
        RouteKind.BEDROCK_INVOKE_STREAM: MESSAGES,
    }
    # A key pool holds Bedrock API keys: Bearer tokens (the default key_auth_headers).

    def new_state(self, env: Mapping[str, str] | None) -> BedrockAuths:
        """One ``BedrockAuth`` per bedrock provider: the AWS credentials it resolved."""
        return BedrockAuths(env)

    async def startup(self, state: BedrockAuths, providers: Iterable[Provider]) -> None:
        # A bedrock provider that cannot work (no region) stops the start, saying why.
        await state.prepare(providers)

    async def prepare_exchange(self, ctx: ExchangeContext) -> Exchange | None:
        return await prepare_bedrock_exchange(
            ctx.send,
            ctx.scope,
            route=ctx.route,
            provider=ctx.provider,
            auths=ctx.state,
            upstreams=ctx.upstreams,
            body=ctx.body,
            info=ctx.info,
            outcome=ctx.outcome,
            byok=ctx.byok,
            begin_dump=ctx.begin_dump,
            actor_headers=ctx.actor_headers,
            failover=ctx.failover,
        )


KIND = BedrockKind()
