"""How the kernel and its query worker talk: length-prefixed JSON plus raw byte blobs.

Why not pickle or multiprocessing's Connection.send: both unpickle what the
other side sends, and the brief rules pickle out entirely. A message here is
one JSON object (the header) and zero or more binary blobs (Arrow IPC bytes
of released tables), nothing else, so neither side ever deserialises code.

Frame layout: 4-byte big-endian header length, the UTF-8 JSON header (its
"blobs" key lists the blob lengths), then the blobs back to back.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

MAX_HEADER = 256 * 2**20  # a header this large means a bug or a broken peer, not a message
_LEN = struct.Struct(">I")


class WireClosed(EOFError):
    """The other side went away (exited, was killed, or closed its end)."""


def send(sock: socket.socket, header: dict[str, Any], blobs: list[bytes] | None = None) -> None:
    blobs = blobs or []
    head = json.dumps({**header, "blobs": [len(b) for b in blobs]}, separators=(",", ":"), default=str).encode()
    sock.sendall(_LEN.pack(len(head)) + head)
    for blob in blobs:
        sock.sendall(blob)


def _exactly(sock: socket.socket, n: int) -> bytes:
    chunks: list[bytes] = []
    left = n
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise WireClosed("the peer closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def recv(sock: socket.socket) -> tuple[dict[str, Any], list[bytes]]:
    (size,) = _LEN.unpack(_exactly(sock, _LEN.size))
    if size > MAX_HEADER:
        raise WireClosed(f"header of {size} bytes refused")
    header = json.loads(_exactly(sock, size))
    if not isinstance(header, dict):
        raise WireClosed("a message header must be a JSON object")
    blobs = [_exactly(sock, int(n)) for n in header.pop("blobs", [])]
    return header, blobs
