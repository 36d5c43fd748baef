"""Frames over a trio stream: the reading and writing half of every paxwal connection.

Both trio shells (impl/acceptor_server.py, impl/proposer_client.py) run a connection as two
tasks: a reader that decodes frames (impl/wire.py) and hands each to the shell's driver, and a
writer that drains the connection's bounded outbox.  Either ends the connection by reporting
why, once, through `lost`; the shell then closes it (cancelling the other half).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from impl.wire import Frame, FrameDecoder, ProtocolError

__all__ = ["READ_SIZE", "Lost", "Received", "read_frames", "run_connection", "write_frames"]

# Bytes asked of the socket per read: an AppendRequest of Neon's 128 KiB in a few reads.
READ_SIZE = 64 * 1024


async def read_frames(
    stream: trio.abc.ReceiveStream,
    received: Callable[[Frame], Awaitable[None]],
    lost: Callable[[str], Awaitable[None]],
    peer: str,
) -> None:
    """Decode frames from `stream` into `received` until it ends, then `lost(reason)`.

    A malformed frame ends it too (the reason says what was wrong): the peer that sent it
    cannot be trusted with the rest of the stream.  `peer` names the other side in reasons.
    """
    decoder = FrameDecoder()
    try:
        while data := await stream.receive_some(READ_SIZE):
            decoder.feed(data)
            while (frame := decoder.next_frame()) is not None:
                await received(frame)
        decoder.eof()
        reason = f"closed by the {peer}"
    except ProtocolError as exc:
        reason = f"protocol error: {exc}"
    except trio.BrokenResourceError as exc:
        reason = f"read failed: {exc!r}"
    await lost(reason)


async def write_frames(
    stream: trio.abc.SendStream,
    outgoing: trio.MemoryReceiveChannel[bytes],
    lost: Callable[[str], Awaitable[None]],
) -> None:
    """Write the encoded frames of `outgoing` to `stream`; `lost(reason)` if it breaks."""
    try:
        async for frame in outgoing:
            await stream.send_all(frame)
    except trio.BrokenResourceError as exc:
        await lost(f"write failed: {exc!r}")


@attrs.frozen
class Received:
    """For a shell's driver: a frame that arrived on `conn` (the shell's connection object)."""

    conn: Any
    frame: Frame


@attrs.frozen
class Lost:
    """For a shell's driver: `conn` ended, and why."""

    conn: Any
    reason: str


async def run_connection(
    conn: Any,
    stream: trio.abc.Stream,
    outgoing: trio.MemoryReceiveChannel[bytes],
    inbox: trio.MemorySendChannel[Any],
    peer: str,
) -> None:
    """Both halves of `conn`, reporting to the driver's `inbox` as `Received` and `Lost`,
    until the shell cancels them (after a `Lost`)."""

    async def received(frame: Frame) -> None:
        await inbox.send(Received(conn, frame))

    async def lost(reason: str) -> None:
        await inbox.send(Lost(conn, reason))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_frames, stream, received, lost, peer)
        nursery.start_soon(write_frames, stream, outgoing, lost)
