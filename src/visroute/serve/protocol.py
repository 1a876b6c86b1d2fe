"""The HTTP/1.1 protocol the service runs under uvicorn: uvicorn's fast httptools parser with a bound on the
request head. uvicorn bounds the head only with its h11 parser (``h11_max_incomplete_event_size``); with httptools
a client could send headers without end and the process would buffer them all. Here the bytes that arrive before
a request's head is complete are counted, and past the limit the client gets 431 and the connection closes."""

from __future__ import annotations

import re

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
             b"content-length: 32\r\nconnection: close\r\n\r\nrequest header fields too large\n")


LINGER_S = 2.0
HEAD_END = re.compile(rb"\r?\n\r?\n")


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """httptools with the head limit of the service's ``limits.max_header_bytes`` (passed to uvicorn as
    ``h11_max_incomplete_event_size``, so one setting bounds both parsers)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.head_limit = self.config.h11_max_incomplete_event_size
        self.head_bytes = 0          # bytes received since the current request began, while its head is incomplete
        self.in_head = True
        self.head_tail = b""         # the last bytes of the previous read, to find a head end split across reads
        self.lingering = False

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return  # what the client still sends after the 431 is read and dropped until the close
        if self.in_head and self.head_limit is not None:
            window = self.head_tail + data       # the end of the head may straddle two reads
            end = HEAD_END.search(window)
            self.head_bytes += end.end() - len(self.head_tail) if end else len(data)   # the body is not the head
            if self.head_bytes > self.head_limit:
                self.refuse_head()
                return
            self.head_tail = window[-3:]
        super().data_received(data)

    def refuse_head(self) -> None:
        """431, then a lingering close (as web servers do): closing a socket with unread bytes would send a reset,
        which can destroy the answer before the client reads it; so stop writing, drop what still comes for up to
        LINGER_S, then close."""
        self.logger.warning("request head over %d bytes: answered 431", self.head_limit)
        if self.transport.is_closing():
            return
        self.lingering = True
        self.transport.write(TOO_LARGE)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)

    def on_headers_complete(self) -> None:
        self.in_head, self.head_bytes, self.head_tail = False, 0, b""
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.in_head, self.head_bytes, self.head_tail = True, 0, b""
        super().on_message_complete()
