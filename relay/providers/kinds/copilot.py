"""``copilot``: GitHub Copilot's API (https://api.individual.githubcopilot.com).

Copilot speaks OpenAI Chat Completions (``/chat/completions``) and Responses
(``/responses``) at the root of its host, and the Anthropic Messages API
(``/v1/messages``) for Claude models; everything else (``/models``,
``/_ping``, the agents and embeddings endpoints) is passed through. There is
no central key: each person's own Copilot token (``Authorization: Bearer``,
exchanged by their client) goes upstream, recorded as BYOK. The business and
enterprise plans have their own hosts (``api.business.githubcopilot.com``,
``api.enterprise.githubcopilot.com``): a provider per plan, or the base URL
of the plan people are on.
"""

from __future__ import annotations

from relay.intercept.apis import CHAT, MESSAGES, RESPONSES
from relay.providers.kinds.base import ProviderKind
from relay.routes import RouteKind, intercepted, passthrough


class CopilotKind(ProviderKind):
    type = "copilot"
    error_style = "openai"
    intercepted = (
        intercepted("POST", r"/chat/completions", RouteKind.CHAT),
        intercepted("POST", r"/responses", RouteKind.RESPONSES),
        intercepted("POST", r"/v1/messages", RouteKind.MESSAGES),
    )
    # Everything else, unparsed (intercepted routes are matched first).
    passthrough = (passthrough("*", r"(/.*)?"),)
    specs = {RouteKind.CHAT: CHAT, RouteKind.RESPONSES: RESPONSES, RouteKind.MESSAGES: MESSAGES}


KIND = CopilotKind()
