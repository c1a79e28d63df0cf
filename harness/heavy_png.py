"""The heavy upload of the memory and overload tests and benchmarks: a PNG that is tiny on the
wire and large once decoded (issue 12's 4096x4096 16-bit RGBA: 130 KB sent, 128 MB of samples)."""

from __future__ import annotations

import struct
import zlib


def png16_rgba(side: int) -> bytes:
    """A white side x side 16-bit RGBA PNG, side x side x 8 bytes once decoded; compressed a row
    at a time, so building it never holds the decoded image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + kind + data + crc

    row = b"\x00" + b"\xff\xff" * 4 * side
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 16, 6, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body
