"""AWS's binary event-stream framing, written (botocore only reads it): what the
Bedrock mock sends for ConverseStream.

A frame: total length (4 bytes), headers length (4), CRC32 of those 8 bytes; the
headers (name length, name, type 7 = string, value length, value); the payload;
CRC32 of everything before it.
"""

from __future__ import annotations

import binascii
import struct

import orjson


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    encoded = b""
    for name, value in headers.items():
        raw_name, raw_value = name.encode(), value.encode()
        encoded += (
            struct.pack("!B", len(raw_name))
            + raw_name
            + b"\x07"
            + struct.pack("!H", len(raw_value))
            + raw_value
        )
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack("!II", total, len(encoded))
    prelude += struct.pack("!I", binascii.crc32(prelude) & 0xFFFFFFFF)
    message = prelude + encoded + payload
    return message + struct.pack("!I", binascii.crc32(message) & 0xFFFFFFFF)


def event(name: str, body: dict[str, object]) -> bytes:
    headers = {":event-type": name, ":content-type": "application/json", ":message-type": "event"}
    return frame(headers, orjson.dumps(body))


def exception(name: str, message: str) -> bytes:
    headers = {":exception-type": name, ":content-type": "application/json", ":message-type": "exception"}
    return frame(headers, orjson.dumps({"message": message}))
