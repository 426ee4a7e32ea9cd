"""``encode_event``: the one writer of SSE blocks, checked against ``SSEDecoder``."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from relay.streams.sse import SSEDecoder, encode_event


def test_data_only_and_named_events_are_the_bytes_providers_send():
    assert encode_event(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert encode_event(b'{"a":1}', "ping") == b'event: ping\ndata: {"a":1}\n\n'
    assert encode_event(b"x", b"error") == b"event: error\ndata: x\n\n"


def test_a_line_break_in_the_data_becomes_another_data_field():
    assert encode_event(b"a\nb\r\nc\rd\n") == b"data: a\ndata: b\ndata: c\ndata: d\ndata: \n\n"


_line_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@given(
    data=_line_text,
    event=st.none() | st.text(st.characters(whitelist_categories=("Ll",)), min_size=1),
    cut=st.integers(min_value=0),
)
def test_the_decoder_reads_back_what_was_encoded_split_anywhere(data, event, cut):
    raw = encode_event(data.encode(), event)
    cut %= len(raw) + 1
    decoder = SSEDecoder()
    events = decoder.feed(raw[:cut]) + decoder.feed(raw[cut:])
    assert decoder.pending == 0
    assert len(events) == 1
    expected = data.replace("\r\n", "\n").replace("\r", "\n")
    assert (events[0].event, events[0].data) == (event or "message", expected)
