"""The keepalive timer: one look per interval, whatever the stream is doing.

The timer is the deadline of ``watch_client``'s wait on ``receive()`` (the
disconnect watcher), so the client below never says anything.

A stream whose send is blocked (a slow client) or whose upstream paused in
the middle of an event cannot take a keepalive comment; the timer must then
wait a whole interval before it looks again, not wake at once in a loop.
The clock is trio's MockClock (autojump): time only passes while every task
sleeps, so a busy loop would stop the clock; the state counts its looks and
fails the test past a bound instead of hanging.
"""

from __future__ import annotations

import pytest
import trio

from relay.intercept.base import KEEPALIVE_COMMENT, Outcome, StreamState, watch_client

INTERVAL = 1.0
BUSY = 1000  # looks: far more than 10 intervals can take


class CountingState(StreamState):
    """A StreamState that counts how often the timer reads ``sending``."""

    __slots__ = ("_sending", "looks")

    def __init__(self) -> None:
        self.looks = 0
        self._sending = False
        super().__init__()

    @property  # type: ignore[override]
    def sending(self) -> bool:
        self.looks += 1
        if self.looks > BUSY:
            raise AssertionError("keepalive is busy-looping")
        return self._sending

    @sending.setter
    def sending(self, value: bool) -> None:
        self._sending = value


async def never_called(message: object) -> None:
    raise AssertionError(f"no keepalive may be sent now: {message!r}")


async def silent_client() -> dict[str, object]:
    await trio.sleep_forever()
    raise AssertionError("unreachable")


async def keepalive(send, state: StreamState, interval: float) -> None:  # type: ignore[no-untyped-def]
    """The watcher of a stream that has started (its head sent), keepalive on."""
    state.start_keepalive(interval)
    await watch_client(silent_client, trio.CancelScope(), Outcome(), send, state)


@pytest.mark.parametrize("why", ["send blocked", "mid-event"])
async def test_one_look_per_interval_while_a_keepalive_cannot_go(autojump_clock, why):
    state = CountingState()
    if why == "send blocked":
        state.sending = True  # a send to a slow client that does not return
    else:
        state.at_boundary = False  # the upstream paused inside an event
    with trio.move_on_after(10 * INTERVAL):
        await keepalive(never_called, state, INTERVAL)
    assert 1 <= state.looks <= 11


async def test_silence_gets_one_comment_per_interval(autojump_clock):
    sent: list[bytes] = []
    state = CountingState()

    async def send(message: dict) -> None:  # type: ignore[type-arg]
        sent.append(message["body"])

    with trio.move_on_after(10.5 * INTERVAL):
        await keepalive(send, state, INTERVAL)
    assert sent == [KEEPALIVE_COMMENT] * 10
