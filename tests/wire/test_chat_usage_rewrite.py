"""The chat ``include_usage`` rewrite's per-event work, against its plain definitions.

``strip_null_usage`` (a ``bytes.find`` shortcut before its pattern) and
``is_injected_usage_chunk`` (a substring pre-test before decoding) run on
every event of a rewritten stream. These properties hold them to the plain
versions on
JSON-ish text built from the tokens that matter, and the whole relay path
(decode with ``keep_raw``, drop the usage chunk, strip ``"usage":null``) to
the stream the client would have received without asking, split anywhere.
"""

from __future__ import annotations

import itertools
import json
import re

import msgspec
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from relay.streams.sse import SSEDecoder, SSEEvent
from relay.wire.openai_chat import is_injected_usage_chunk, strip_null_usage

modest = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# The definition strip_null_usage had before its shortcut.
_REFERENCE_PATTERN = re.compile(rb',\s*"usage"\s*:\s*null(?=\s*[,}])|"usage"\s*:\s*null\s*,')


def reference_strip(raw: bytes) -> bytes:
    if b'"usage"' not in raw:
        return raw
    return _REFERENCE_PATTERN.sub(b"", raw, count=1)


class _Probe(msgspec.Struct):
    choices: list[msgspec.Raw] | None = None
    usage: object = None


def reference_injected(data: str) -> bool:
    try:
        probe = msgspec.json.decode(data, type=_Probe)
    except msgspec.DecodeError:
        return False
    return probe.choices == [] and isinstance(probe.usage, dict)


TOKENS = [
    '"usage"',
    '"choices"',
    ":",
    "null",
    ",",
    "}",
    "{",
    "[",
    "]",
    " ",
    "\t",
    "\n",
    "\r",
    "\x0b",
    "\x0c",
    '"x"',
    "1",
    '"usage":null',
    ',"usage":null',
    '"choices":[]',
    '{"prompt_tokens":1}',
    '"us',
    'age"',
]
jsonish = st.lists(st.sampled_from(TOKENS), max_size=24).map("".join)


@modest
@given(jsonish)
@example(',\x0b"usage":null}')  # \s also matches VT and FF
@example(', \x0c "usage" : null }')
@example('"usage":null,"x":1')
@example('{"a":"usage","usage":null}')
@example(',"usage":null ]')
def test_strip_null_usage_is_the_pattern_s_first_match(text: str) -> None:
    raw = text.encode()
    assert strip_null_usage(raw) == reference_strip(raw)


@modest
@given(jsonish)
def test_strip_null_usage_in_an_sse_block(text: str) -> None:
    raw = b"data: " + text.encode() + b"\n\n"
    assert strip_null_usage(raw) == reference_strip(raw)


@modest
@given(jsonish)
def test_injected_pre_test_changes_no_answer(text: str) -> None:
    event = SSEEvent("message", text)
    assert is_injected_usage_chunk(event) is reference_injected(text)


@modest
@given(
    st.lists(st.sampled_from(TOKENS), max_size=12).map("".join),
    st.sampled_from(["[]", "[ ]", "[\n]", '[{"index":0}]']),
    st.booleans(),
)
def test_injected_on_objects(middle: str, choices: str, usage_object: bool) -> None:
    usage = '{"total_tokens":3}' if usage_object else "null"
    for text in (
        f'{{"id":"c","choices":{choices},"usage":{usage}}}',
        f'{{"usage":{usage}, "choices" : {choices},"x":"{middle!s}"}}',
        f'{{"choices":{choices},"usage":{usage},"note":"{middle.replace(chr(34), "")}"}}',
    ):
        event = SSEEvent("message", text)
        assert is_injected_usage_chunk(event) is reference_injected(text)


def _chunk(content: str | None, finish: str | None, usage_null: bool) -> bytes:
    body: dict[str, object] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "gpt-x",
        "choices": [
            {
                "index": 0,
                "delta": {} if content is None else {"content": content},
                "finish_reason": finish,
            }
        ],
    }
    if usage_null:
        body["usage"] = None
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def _streams(contents: list[str]) -> tuple[bytes, bytes]:
    """(what the upstream sends under include_usage, what the client would get without)."""
    asked = [_chunk(c, None, True) for c in contents] + [_chunk(None, "stop", True)]
    plain = [_chunk(c, None, False) for c in contents] + [_chunk(None, "stop", False)]
    usage = {"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 1}}
    asked.append(b"data: " + json.dumps(usage).encode() + b"\n\n")
    done = b"data: [DONE]\n\n"
    return b"".join(asked) + done, b"".join(plain) + done


def _relay(wire: bytes, cuts: list[int]) -> bytes:
    """What the relay's pump forwards in drop-injected mode, fed ``wire`` cut at ``cuts``."""
    decoder = SSEDecoder(keep_raw=True)
    out: list[bytes] = []
    bounds = [0, *sorted(set(cuts)), len(wire)]
    for start, end in itertools.pairwise(bounds):
        for event in decoder.feed(wire[start:end]):
            if event.dispatch and is_injected_usage_chunk(event):
                continue
            out.append(strip_null_usage(event.raw) if event.dispatch else event.raw)
    return b"".join(out) + (decoder.pending_raw if decoder.pending else b"")


@modest
@given(st.data())
def test_rewritten_stream_split_anywhere_is_the_plain_stream(data: st.DataObject) -> None:
    contents = data.draw(
        st.lists(st.text(alphabet='ab "\\,:{}usagenul\u00e9\n', max_size=12), max_size=5)
    )
    asked, plain = _streams(contents)
    cuts = data.draw(st.lists(st.integers(0, len(asked)), max_size=12))
    assert _relay(asked, cuts) == plain
