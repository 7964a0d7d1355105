"""The ingest's MQTT frames (ingest/mqtt_wire.py): what a broker sends arrives whole, in order,
however the stream is cut into reads; a broken stream is a ProtocolError, never a hang or a
wrong message."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest import mqtt_wire as wire

topics = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00#+"),
                 min_size=1, max_size=80)
messages = st.lists(st.tuples(topics, st.binary(max_size=3000), st.integers(1, 65535),
                              st.sampled_from([0, 1]), st.booleans()), max_size=30)


def _publish(topic: str, payload: bytes, mid: int, qos: int, retain: bool) -> bytes:
    t = wire.utf8(topic)
    body = t + (mid.to_bytes(2, "big") if qos else b"") + payload
    return bytes([0x30 | qos << 1 | retain]) + wire.varint(len(body)) + body


def _feed(stream: bytes, cuts: list[int]) -> list:
    """Parse `stream` as the receiver does, read by read, cut at `cuts`."""
    buf, out, last = bytearray(), [], 0
    for c in [*sorted(cuts), len(stream)]:
        buf += stream[last:c]
        last = c
        frames, used = wire.parse(buf, 7)
        del buf[:used]
        out += frames
    assert not buf, "a whole stream leaves nothing behind"
    return out


@settings(max_examples=300, deadline=None)
@given(messages, st.lists(st.integers(0, 100_000), max_size=40))
def test_every_message_arrives_whole_in_order_however_the_reads_cut(msgs, cuts) -> None:
    stream = b"".join(_publish(*m) for m in msgs) + b"\xd0\x00"  # and a PINGRESP
    cuts = [c % (len(stream) + 1) for c in cuts]
    got = _feed(stream, cuts)
    assert [(d.topic, d.payload, d.mid if d.qos else 1, d.qos, d.retained, d.generation)
            for d in got[:-1]] == [(t, p, m if q else 1, q, r, 7) for t, p, m, q, r in msgs]
    assert got[-1] == wire.Frame(wire.PINGRESP, 0, b"")


def test_the_generators_publish_frame_is_what_the_receiver_reads() -> None:
    frame = wire.publish_frame(wire.utf8("tether/v1/devices/d1/loc"), b'{"ts":1}', 513)
    [d], used = wire.parse(bytearray(frame))
    assert (d.topic, d.payload, d.mid, d.qos, d.retained, used) == \
        ("tether/v1/devices/d1/loc", b'{"ts":1}', 513, 1, False, len(frame))


@pytest.mark.parametrize("n", [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152,
                               268_435_455])
def test_remaining_length_round_trips(n: int) -> None:
    v = wire.varint(n)
    assert len(v) == (1 if n < 128 else 2 if n < 16_384 else 3 if n < 2_097_152 else 4)
    with pytest.raises(ValueError):
        wire.varint(268_435_456)


def test_control_frames() -> None:
    connect = wire.connect_frame("w1", 30, False, "dev", "pw")
    assert connect[0] == 0x10 and connect[-2:] == b"pw" and connect[9] == 0xC0
    assert wire.connect_frame("w1", 30, True)[9] == 0x02
    [f], _ = wire.parse(bytearray(b"\x20\x02\x00\x05"))
    assert wire.connack_result(f) == 5
    [s], _ = wire.parse(bytearray(b"\x90\x04\x00\x01\x01\x80"))
    assert wire.suback_codes(s) == (1, b"\x01\x80")
    assert wire.pubacks([1, 258]) == b"\x40\x02\x00\x01\x40\x02\x01\x02"
    sub = wire.subscribe_frame(1, ["a/#", "b/#"])
    assert sub[:2] == b"\x82\x0e" and sub.endswith(b"b/#\x01")
    with pytest.raises(wire.ProtocolError):
        wire.connack_result(s)


@pytest.mark.parametrize("stream", [
    b"\x30\xff\xff\xff\xff\x01",  # a length field of five bytes
    b"\x30\xff\xff\xff\x7f",  # 256 MB: not a device's message
    b"\x34\x05\x00\x01a\x00\x01",  # QoS 2: we subscribed at QoS 1
    b"\x30\x01\x00",  # PUBLISH without a topic
    b"\x32\x04\x00\x05abc",  # topic longer than the frame
    b"\x32\x03\x00\x01a",  # QoS 1 without its packet id
])
def test_a_broken_stream_is_a_protocol_error(stream: bytes) -> None:
    with pytest.raises(wire.ProtocolError):
        wire.parse(bytearray(stream))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_garbage_parses_or_fails_cleanly(data: bytes) -> None:
    try:
        frames, used = wire.parse(bytearray(data))
    except wire.ProtocolError:
        return
    assert 0 <= used <= len(data)
    assert all(isinstance(f, wire.Delivery | wire.Frame) for f in frames)


def test_a_topic_that_is_not_utf8_reaches_the_decoder_as_replacement_characters() -> None:
    [d], _ = wire.parse(bytearray(b"\x30\x05\x00\x02\xff\xfeX"))
    assert d.topic == "\ufffd\ufffd" and d.payload == b"X"
