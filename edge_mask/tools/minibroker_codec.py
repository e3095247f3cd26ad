"""MQTT 3.1.1 / 5 packet encoding and decoding for the embedded broker (edge_mask.tools.minibroker).

Why a separate module: the parsing is where untrusted bytes meet the broker, so it is kept small,
bounds-checked everywhere, and raising only `ProtocolError` (which closes one connection) on bad input.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14

# MQTT 5 property id -> wire type
_BYTE, _U16, _U32, _VARINT, _STR, _BIN, _PAIR = range(7)
PROPERTY_TYPES = {
    0x01: _BYTE, 0x02: _U32, 0x03: _STR, 0x08: _STR, 0x09: _BIN, 0x0B: _VARINT, 0x11: _U32, 0x12: _STR,
    0x13: _U16, 0x15: _STR, 0x16: _BIN, 0x17: _BYTE, 0x18: _U32, 0x19: _BYTE, 0x1A: _STR, 0x1C: _STR,
    0x1F: _STR, 0x21: _U16, 0x22: _U16, 0x23: _U16, 0x24: _BYTE, 0x25: _BYTE, 0x26: _PAIR, 0x27: _U32,
    0x28: _BYTE, 0x29: _BYTE, 0x2A: _BYTE,
}
_FORWARDED = {0x01, 0x02, 0x03, 0x08, 0x09, 0x26}  # publish properties passed on to subscribers


class ProtocolError(Exception):
    """Malformed or unsupported input; the connection that sent it is closed."""


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    props: bytes = b""  # MQTT 5 properties to forward (already encoded, without the length)


@dataclass(frozen=True)
class Connect:
    client_id: str
    v5: bool
    clean: bool
    keepalive: int
    session_expiry: int
    receive_max: int
    will: Message | None


class Reader:
    """Bounds-checked cursor over one packet body."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ProtocolError("packet shorter than its fields")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def byte(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack(">H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def varint(self) -> int:
        value, shift = 0, 0
        for _ in range(4):
            b = self.byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
        raise ProtocolError("variable byte integer longer than 4 bytes")

    def binary(self) -> bytes:
        return self.take(self.u16())

    def string(self) -> str:
        raw = self.binary()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("invalid UTF-8 string") from None
        if "\x00" in text:
            raise ProtocolError("NUL in a string")
        return text

    def remaining(self) -> bytes:
        return self.take(len(self.data) - self.pos)

    @property
    def done(self) -> bool:
        return self.pos >= len(self.data)

    def properties(self) -> list[tuple[int, object, bytes]]:
        """MQTT 5 properties as (id, value, raw encoding)."""
        body = Reader(self.take(self.varint()))
        out: list[tuple[int, object, bytes]] = []
        while not body.done:
            start = body.pos
            pid = body.varint()
            kind = PROPERTY_TYPES.get(pid)
            value: object
            if kind is None:
                raise ProtocolError(f"unknown property {pid:#x}")
            if kind == _BYTE:
                value = body.byte()
            elif kind == _U16:
                value = body.u16()
            elif kind == _U32:
                value = body.u32()
            elif kind == _VARINT:
                value = body.varint()
            elif kind == _STR:
                value = body.string()
            elif kind == _BIN:
                value = body.binary()
            else:
                value = (body.string(), body.string())
            out.append((pid, value, body.data[start : body.pos]))
        return out


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def u16(n: int) -> bytes:
    return struct.pack(">H", n)


def string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return u16(len(raw)) + raw


def encode_props(fields: dict[int, object], raw: bytes = b"") -> bytes:
    out = bytearray(raw)
    for pid, value in fields.items():
        kind = PROPERTY_TYPES[pid]
        out += varint(pid)
        if kind == _BYTE:
            out.append(int(value))  # type: ignore[call-overload]
        elif kind == _U16:
            out += u16(int(value))  # type: ignore[call-overload]
        elif kind == _U32:
            out += struct.pack(">I", int(value))  # type: ignore[call-overload]
        elif kind == _STR:
            out += string(str(value))
        else:  # pragma: no cover - not used by the broker
            raise ValueError(f"cannot encode property {pid:#x}")
    return varint(len(out)) + bytes(out)


def encode_packet(ptype: int, flags: int, body: bytes) -> bytes:
    return bytes([(ptype << 4) | flags]) + varint(len(body)) + body


def encode_publish(msg: Message, qos: int, pid: int, dup: bool = False, v5: bool = False) -> bytes:
    flags = (0x08 if dup else 0) | (qos << 1) | (1 if msg.retain else 0)
    body = string(msg.topic) + (u16(pid) if qos else b"")
    if v5:
        body += varint(len(msg.props)) + msg.props
    return encode_packet(PUBLISH, flags, body + msg.payload)


async def read_packet(reader: asyncio.StreamReader, max_packet: int) -> tuple[int, int, bytes]:
    """One packet: (type, flags, body). Refuses packets over `max_packet` before reading them."""
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    for _ in range(4):
        b = (await reader.readexactly(1))[0]
        length |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    else:
        raise ProtocolError("remaining length longer than 4 bytes")
    if length > max_packet:
        raise ProtocolError(f"packet of {length} bytes exceeds the {max_packet}-byte limit")
    body = await reader.readexactly(length) if length else b""
    return first >> 4, first & 0x0F, body


# ------------------------------------------------------------------------------------------ decoding


def parse_connect(body: bytes) -> Connect:
    r = Reader(body)
    name, level = r.string(), r.byte()
    if name not in ("MQTT", "MQIsdp") or level not in (3, 4, 5):
        raise ProtocolError(f"unsupported protocol {name!r} level {level}")
    v5 = level == 5
    flags = r.byte()
    if flags & 0x01:
        raise ProtocolError("reserved CONNECT flag set")
    keepalive = r.u16()
    session_expiry, receive_max = 0, 65535
    if v5:
        for pid, value, _raw in r.properties():
            if pid == 0x11:
                session_expiry = int(value)  # type: ignore[call-overload]
            elif pid == 0x21:
                receive_max = int(value)  # type: ignore[call-overload]
    client_id = r.string()
    will = None
    if flags & 0x04:
        will_props = b""
        if v5:
            will_props = b"".join(raw for pid, _v, raw in r.properties() if pid in _FORWARDED)
        topic, payload = r.string(), r.binary()
        qos = (flags >> 3) & 0x03
        if qos > 2 or not valid_topic(topic):
            raise ProtocolError("invalid will")
        will = Message(topic, payload, min(qos, 1), bool(flags & 0x20), will_props)
    if flags & 0x80:
        r.string()  # user name: ignored, the certificate is the identity
    if flags & 0x40:
        r.binary()  # password: ignored
    return Connect(client_id, v5, bool(flags & 0x02), keepalive, session_expiry, receive_max, will)


def parse_publish(flags: int, body: bytes, v5: bool) -> tuple[Message, int]:
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise ProtocolError("PUBLISH with QoS 3")
    r = Reader(body)
    topic = r.string()
    pid = r.u16() if qos else 0
    if qos and pid == 0:
        raise ProtocolError("PUBLISH with packet id 0")
    props = b""
    if v5:
        parsed = r.properties()
        if any(pid_ == 0x23 for pid_, _v, _raw in parsed):
            raise ProtocolError("topic aliases are not supported (maximum 0 was announced)")
        props = b"".join(raw for pid_, _v, raw in parsed if pid_ in _FORWARDED)
    if not valid_topic(topic):
        raise ProtocolError(f"invalid topic {topic!r}")
    return Message(topic, r.remaining(), qos, bool(flags & 0x01), props), pid


def parse_subscribe(body: bytes, v5: bool) -> tuple[int, list[tuple[str, int]]]:
    r = Reader(body)
    pid = r.u16()
    if v5:
        r.properties()
    requests = []
    while not r.done:
        requests.append((r.string(), r.byte()))
    if not requests or len(requests) > 100:
        raise ProtocolError("SUBSCRIBE needs 1-100 filters")
    return pid, requests


def parse_unsubscribe(body: bytes, v5: bool) -> tuple[int, list[str]]:
    r = Reader(body)
    pid = r.u16()
    if v5:
        r.properties()
    filters = []
    while not r.done:
        filters.append(r.string())
    if not filters:
        raise ProtocolError("UNSUBSCRIBE without filters")
    return pid, filters


# ------------------------------------------------------------------------------------------ topics


def valid_topic(topic: str) -> bool:
    return bool(topic) and "+" not in topic and "#" not in topic and len(topic) <= 1024


def valid_filter(flt: str) -> bool:
    if not flt or len(flt) > 1024:
        return False
    levels = flt.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def topic_matches(flt: str, topic: str) -> bool:
    """MQTT matching; wildcards at the first level never match topics starting with `$`."""
    if topic.startswith("$") and flt[:1] in ("+", "#"):
        return False
    f_levels, t_levels = flt.split("/"), topic.split("/")
    for i, level in enumerate(f_levels):
        if level == "#":
            return True
        if i >= len(t_levels) or (level != "+" and level != t_levels[i]):
            return False
    return len(f_levels) == len(t_levels)
