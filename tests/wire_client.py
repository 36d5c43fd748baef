"""A scripted peer for the trio shells' tests: frames over TCP, traced like a node.

`WireClient` plays a proposer by hand: each `send` stamps the message with the client's own
trace id (`<node>:<n>`) and Lamport clock, as a traced proposer would, and remembers it, so a
test can pair the server's trace with what was sent.  `receive` returns whole frames and
advances the clock past each one's.  `connect` binds the connection to a timeline first, as
a proposer does (impl/acceptor_server.py rule 10), with an untraced OpenTimeline.
"""

from __future__ import annotations

import trio

from impl.wire import Frame, FrameDecoder, Message, MsgMeta, OpenTimeline, encode


class WireClient:
    """One connection to a server, speaking as node `node`.

    Attributes:
        sent: the meta of every message sent, in order.
        received: every frame received, in order.
    """

    def __init__(self, stream: trio.SocketStream, node: str) -> None:
        self.node = node
        self.stream = stream
        self.lc = 0
        self.sent: list[MsgMeta] = []
        self.received: list[Frame] = []
        self._decoder = FrameDecoder()

    @classmethod
    async def connect(cls, port: int, node: str = "p1", timeline: str | None = "main", wal_start: int = 0) -> WireClient:
        """Connect as `node`; unless `timeline` is None, send OpenTimeline(node, timeline, wal_start) first."""
        client = cls(await trio.open_tcp_stream("127.0.0.1", port), node)
        if timeline is not None:
            await client.stream.send_all(encode(OpenTimeline(proposer=node, timeline=timeline, wal_start=wal_start)))
        return client

    async def send(self, *msgs: Message) -> None:
        """Send the messages back to back, each a traced frame."""
        frames = []
        for msg in msgs:
            self.lc += 1
            meta = MsgMeta(f"{self.node}:{len(self.sent) + 1}", self.lc)
            self.sent.append(meta)
            frames.append(encode(msg, meta))
        await self.stream.send_all(b"".join(frames))

    async def receive(self) -> Frame:
        """The next frame; fails the test (EOFError) if the server closes first."""
        while (frame := self._decoder.next_frame()) is None:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError("the server closed the connection")
            self._decoder.feed(data)
        if frame.meta is not None:
            self.lc = max(self.lc, frame.meta.lc) + 1
        self.received.append(frame)
        return frame

    async def receive_message(self) -> Message:
        return (await self.receive()).message

    async def wait_closed(self) -> None:
        """Read, discarding frames, until the server closes the connection (EOF or reset)."""
        try:
            while await self.stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass

    async def aclose(self) -> None:
        await self.stream.aclose()
