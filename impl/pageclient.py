"""Clients of the pageserver's page service (impl/pageserver.py rule 4): a trio one for computes
and tests, a blocking one for the command line.  Kept apart from the service so that a compute
does not import the pageserver (nor object storage) to read pages."""

from __future__ import annotations

import socket

import trio

from impl.framing import READ_SIZE
from impl.wire import FrameDecoder, Message, encode

__all__ = ["PageClient", "page_request"]


class PageClient:
    """A trio client of the page service: `async with await PageClient.connect(port) as c`."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._decoder = FrameDecoder()

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> PageClient:
        return cls(await trio.open_tcp_stream(host, port))

    async def __aenter__(self) -> PageClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stream.aclose()

    async def request(self, msg: Message) -> Message:
        """Send one request and return its reply (a PageserverError if refused).

        Raises:
            OSError, trio.BrokenResourceError: the connection broke; ProtocolError: a bad reply.
        """
        await self.stream.send_all(encode(msg))
        while (frame := self._decoder.next_frame()) is None:
            data = await self.stream.receive_some(READ_SIZE)
            if not data:
                raise OSError("the pageserver closed the connection")
            self._decoder.feed(data)
        return frame.message


def page_request(port: int, msg: Message, timeout: float = 15.0) -> Message:
    """Blocking: send one request to the pageserver on 127.0.0.1:`port`, return its reply.

    Raises:
        OSError: no connection, or no reply within `timeout`; ProtocolError: a bad reply.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(encode(msg))
        decoder = FrameDecoder()
        while True:
            data = sock.recv(READ_SIZE)
            if not data:
                raise OSError("the pageserver closed the connection before replying")
            decoder.feed(data)
            frame = decoder.next_frame()
            if frame is not None:
                return frame.message
