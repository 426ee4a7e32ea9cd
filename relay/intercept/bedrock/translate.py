"""Anthropic Messages request → Bedrock InvokeModel request (pure functions).

Bedrock serves Claude with the Anthropic Messages body, with differences:
the model is in the URL, not the body; streaming is chosen by the operation
(InvokeModel or InvokeModelWithResponseStream), not by ``stream``;
``anthropic_version`` must be ``bedrock-2023-05-31``; beta flags travel in
the body's ``anthropic_beta`` list, and Bedrock refuses flags it does not know
and top-level fields absent from its schema (400 "extraneous key").

Sources: AWS "Anthropic Claude Messages API — Request and Response"
(docs.aws.amazon.com/bedrock/latest/userguide/model-parameters-anthropic-claude-messages-request-response.html)
and the Coder AI Bridge's Bedrock support, which this relay follows.
"""

from __future__ import annotations

from urllib.parse import quote

import msgspec

BEDROCK_ANTHROPIC_VERSION = "bedrock-2023-05-31"

# Anthropic-Beta flags Bedrock accepts; any other flag makes it answer 400
# "invalid beta flag", so the others are dropped.
BEDROCK_SUPPORTED_BETAS: frozenset[str] = frozenset(
    {
        "computer-use-2025-01-24",  # Claude 3.7 Sonnet
        "token-efficient-tools-2025-02-19",  # Claude 3.7 Sonnet, Claude 4+
        "interleaved-thinking-2025-05-14",  # Claude 4+
        "output-128k-2025-02-19",  # Claude 3.7 Sonnet
        "dev-full-thinking-2025-05-14",  # Claude 4+ (needs account team access)
        "context-1m-2025-08-07",  # Claude Sonnet 4
        "context-management-2025-06-27",  # Sonnet 4.5, Haiku 4.5: enables context_management
        "effort-2025-11-24",  # Opus 4.5: enables output_config
        "tool-search-tool-2025-10-19",  # Opus 4.5
        "tool-examples-2025-10-29",  # Opus 4.5
    }
)

# Top-level Anthropic Messages fields absent from Bedrock's request schema.
BEDROCK_UNSUPPORTED_FIELDS: tuple[str, ...] = (
    "metadata",
    "service_tier",
    "container",
    "inference_geo",
)

# Fields Bedrock accepts only when the beta flag that enables them is sent.
BEDROCK_BETA_GATED_FIELDS: dict[str, str] = {
    "output_config": "effort-2025-11-24",
    "context_management": "context-management-2025-06-27",
}


class InvalidAnthropicBody(ValueError):
    """The client's body is not a JSON object (the caller answers 400)."""


def map_model(requested: str | None, *, model: str, small_fast_model: str) -> str:
    """The Bedrock model id for a requested Anthropic model.

    Claude Code asks for a Haiku model for its background work; any requested
    model naming "haiku" goes to the small-fast model, everything else to the
    main model.
    """
    if requested and "haiku" in requested.lower():
        return small_fast_model
    return model


def bedrock_betas(anthropic_beta_header: str | None) -> list[str]:
    """The flags of an ``anthropic-beta`` header that Bedrock accepts, in order, once each."""
    if not anthropic_beta_header:
        return []
    kept: list[str] = []
    for flag in anthropic_beta_header.split(","):
        flag = flag.strip()
        if flag in BEDROCK_SUPPORTED_BETAS and flag not in kept:
            kept.append(flag)
    return kept


def to_bedrock_body(anthropic_body: bytes, anthropic_beta_header: str | None) -> bytes:
    """The InvokeModel body for an Anthropic Messages request body.

    ``anthropic_version`` set, ``model`` and ``stream`` removed, accepted betas
    moved into ``anthropic_beta``, unsupported fields removed; every other
    field is kept as the client sent it, in its order.
    """
    try:
        request = msgspec.json.decode(anthropic_body)
    except msgspec.DecodeError as exc:
        raise InvalidAnthropicBody(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidAnthropicBody("request body is not valid JSON: nested too deeply") from None
    if not isinstance(request, dict):
        raise InvalidAnthropicBody("request body must be a JSON object")

    betas = bedrock_betas(anthropic_beta_header)
    # A client speaking Bedrock's dialect may already list betas in the body.
    body_betas = request.get("anthropic_beta")
    if isinstance(body_betas, list):
        betas += [b for b in bedrock_betas(",".join(map(str, body_betas))) if b not in betas]

    dropped = {"model", "stream", "anthropic_version", "anthropic_beta"}
    dropped.update(BEDROCK_UNSUPPORTED_FIELDS)
    dropped.update(f for f, flag in BEDROCK_BETA_GATED_FIELDS.items() if flag not in betas)

    out: dict[str, object] = {"anthropic_version": BEDROCK_ANTHROPIC_VERSION}
    if betas:
        out["anthropic_beta"] = betas
    out.update((k, v) for k, v in request.items() if k not in dropped)
    return msgspec.json.encode(out)


def invoke_path(model_id: str) -> str:
    """``/model/{modelId}/invoke`` with the id percent-encoded (``:`` and ``/`` included)."""
    return f"/model/{quote(model_id, safe='')}/invoke"


def invoke_stream_path(model_id: str) -> str:
    """``/model/{modelId}/invoke-with-response-stream``, percent-encoded like :func:`invoke_path`."""
    return f"/model/{quote(model_id, safe='')}/invoke-with-response-stream"
