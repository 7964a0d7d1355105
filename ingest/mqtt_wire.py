"""MQTT 3.1.1 frames, pure (no I/O): what the ingest's receiver and the bench's load generator
put on the wire and take off it.

Why by hand, beside aiomqtt/paho: at saturation of the fleet bench (one fix per message), paho's
receive path and aiomqtt's wrapping of it took 25 % of a worker's CPU (py-spy, docs/bench.md):
three `recv` calls, a message object, a topic-filter match, a log check and an asyncio queue per
message, and one `send` per PUBACK. The ingest needs little of the protocol (connect, subscribe,
receive, acknowledge after commit, keep alive), so it parses whole socket reads in one loop and
writes a batch's PUBACKs in one write. aiomqtt stays for everything that publishes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK = 1, 2, 3, 4, 8, 9
PINGREQ_FRAME, PINGRESP, DISCONNECT_FRAME = b"\xc0\x00", 13, b"\xe0\x00"
MAX_FRAME_BYTES = 16 * 1024 * 1024  # a larger length is a broken stream, not a message
CONNACK_REFUSED = {1: "unacceptable protocol version", 2: "client identifier rejected",
                   3: "server unavailable", 4: "bad user name or password",
                   5: "not authorised"}


class ProtocolError(Exception):
    """The byte stream is not MQTT 3.1.1 as we asked for it: the connection is dropped."""


@dataclass(frozen=True, slots=True)
class Frame:
    """A received control packet other than PUBLISH: its type, flags and variable part."""
    kind: int
    flags: int
    body: bytes


class Delivery(NamedTuple):
    """A received PUBLISH (a named tuple: built per message, 3x cheaper than a frozen
    dataclass, and as immutable)."""
    topic: str
    payload: bytes
    retained: bool
    mid: int
    qos: int
    generation: int  # which connection delivered it: an ack on a later one would be wrong


def varint(n: int) -> bytes:
    """The remaining-length field (1 to 4 bytes, 7 bits each, low first)."""
    if not 0 <= n < 128 ** 4:
        raise ValueError(f"MQTT remaining length out of range: {n}")
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    if len(b) > 0xFFFF:
        raise ValueError("MQTT string longer than 65,535 bytes")
    return len(b).to_bytes(2, "big") + b


def connect_frame(client_id: str, keepalive_s: int, clean_session: bool,
                  username: str | None = None, password: str | None = None) -> bytes:
    flags = (0x02 if clean_session else 0) | (0x80 if username is not None else 0) \
        | (0x40 if username is not None and password is not None else 0)
    body = utf8("MQTT") + bytes([4, flags]) + keepalive_s.to_bytes(2, "big") + utf8(client_id)
    if username is not None:
        body += utf8(username)
        if password is not None:
            body += utf8(password)
    return b"\x10" + varint(len(body)) + body


def subscribe_frame(mid: int, topics: Sequence[str], qos: int = 1) -> bytes:
    body = mid.to_bytes(2, "big") + b"".join(utf8(t) + bytes([qos]) for t in topics)
    return b"\x82" + varint(len(body)) + body


def publish_frame(topic: bytes, payload: bytes, mid: int) -> bytes:
    """QoS 1; `topic` already length-prefixed (`utf8(topic)`), as a generator keeps it."""
    return b"\x32" + varint(len(topic) + 2 + len(payload)) + topic + mid.to_bytes(2, "big") \
        + payload


def pubacks(mids: Sequence[int]) -> bytes:
    return b"".join(b"\x40\x02" + m.to_bytes(2, "big") for m in mids)


def connack_result(frame: Frame) -> int:
    """The CONNACK's return code (0: accepted)."""
    if frame.kind != CONNACK or len(frame.body) != 2:
        raise ProtocolError(f"expected CONNACK, got packet type {frame.kind}")
    return frame.body[1]


def suback_codes(frame: Frame) -> tuple[int, bytes]:
    """(packet id, granted QoS per topic; 0x80 is a refusal)."""
    if len(frame.body) < 3:
        raise ProtocolError("SUBACK too short")
    return int.from_bytes(frame.body[:2], "big"), frame.body[2:]


def parse(buf: bytearray, generation: int = 0) -> tuple[list[Delivery | Frame], int]:
    """Every whole frame at the start of `buf`, and how many bytes they took; a frame cut off
    by the end of the read waits for the next one. Raises ProtocolError on a broken stream."""
    out: list[Delivery | Frame] = []
    i, n = 0, len(buf)
    while n - i >= 2:
        length, mult, j = 0, 1, i + 1
        while True:
            if j >= n:
                return out, i  # the length field itself is cut off
            b = buf[j]
            length += (b & 0x7F) * mult
            j += 1
            if b < 0x80:
                break
            mult <<= 7
            if mult > 128 ** 3:
                raise ProtocolError("remaining length longer than 4 bytes")
        if length > MAX_FRAME_BYTES:
            raise ProtocolError(f"frame of {length:,} bytes")
        end = j + length
        if end > n:
            return out, i
        head = buf[i]
        if head >> 4 == PUBLISH:
            qos = (head >> 1) & 3
            if qos > 1:
                raise ProtocolError(f"PUBLISH at QoS {qos}; subscribed at QoS 1")
            if length < 2:
                raise ProtocolError("PUBLISH without a topic")
            p = j + 2 + (buf[j] << 8 | buf[j + 1])
            if p + 2 * qos > end:
                raise ProtocolError("PUBLISH shorter than its topic")
            # A broker checks topics are UTF-8; should one not, the decoder rejects the
            # replacement characters as an unknown topic rather than the stream dying here.
            topic = buf[j + 2:p].decode("utf-8", "replace")
            mid = 0
            if qos:
                mid = buf[p] << 8 | buf[p + 1]
                p += 2
            out.append(Delivery(topic, bytes(buf[p:end]), bool(head & 1), mid, qos, generation))
        else:
            out.append(Frame(head >> 4, head & 0x0F, bytes(buf[j:end])))
        i = end
    return out, i
