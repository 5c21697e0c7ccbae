"""The wire format alone, with plain bytes: decoding, validation and error messages."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat.protocol import (
    Edit,
    FrameError,
    Join,
    Message,
    MessageFrame,
    NewMessage,
    NewRoom,
    Ping,
    Send,
    User,
    as_id,
    check_body,
    decode_body,
    decode_frame,
    encode_text,
    is_blank,
    peek_ref,
)
from chat.protocol.types import _checked_fields

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def test_join_decodes_with_defaults() -> None:
    """A minimal join decodes, with ref and since defaulting to None."""
    frame = decode_frame(b'{"type": "join", "room": 7}')
    assert frame == Join(room=7, ref=None, since=None)


def test_ids_may_come_back_as_digit_strings() -> None:
    """An id echoed back as a string of digits is accepted."""
    frame = decode_frame('{"type": "send", "room": "12", "body": "hi", "ref": "r1"}')
    assert isinstance(frame, Send) and frame.room == "12" and frame.ref == "r1"


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"not json", "not a JSON object"),
        (b"[1, 2]", "`object`"),
        (b'{"room": 1}', "no `type`"),
        (b'{"type": "dance"}', "unknown frame type 'dance'"),
        (b'{"type": "join", "room": true}', "`room`"),
        (b'{"type": "join", "room": "abc"}', "`room` must be an id"),
        (b'{"type": "join", "room": 1, "since": -1}', "`since`"),
        (b'{"type": "send", "room": 1, "body": ""}', "`body`"),
        (b'{"type": "send", "room": 1, "body": "   "}', "white space"),
        (b'{"type": "send", "room": 1, "body": "a\\u0000b"}', "NUL"),
        (b'{"type": "send", "room": 1, "body": "\\ud800"}', "`body` must not contain a lone"),
        (b'{"type": "send", "room": 1, "body": "x", "client_id": "\\udfff"}', "`client_id`"),
        (b'{"type": "send", "room": 1, "body": "x", "client_id": "a\\u0000"}', "`client_id`"),
        (b'{"type": "send", "room": 1, "body": "\\u200b\\u2060"}', "white space"),
        (b'{"type": "ping", "ref": "r\\u0000"}', "`ref`"),
        (b'{"type": "hello", "token": "t\\u0000"}', "`token`"),
        (b'{"type": "join", "room": "9223372036854775808"}', "`room` must be an id"),
        (b'{"type": "join", "room": "99999999999999999999"}', "`room` must be an id"),
        (b'{"type": "join", "room": 9223372036854775808}', "`room`"),
        (b'{"type": "edit", "room": 1, "id": "9223372036854775808", "body": "x"}', "`id`"),
        (b'{"type": "join", "room": "12\\n"}', "`room` must be an id"),
        (b'{"type": "send", "room": 1, "body": "x", "client_id": ""}', "`client_id`"),
        (b'{"type": "read", "room": 1, "seq": 1e400}', "`seq`"),
        (b'{"type": "send", "room": 1, "body": "\xff"}', "not a JSON object"),
    ],
)
def test_bad_frames_name_the_problem(raw: bytes, needle: str) -> None:
    """Each malformed frame raises FrameError with a message naming what is wrong."""
    with pytest.raises(FrameError) as info:
        decode_frame(raw)
    assert needle in str(info.value)


def test_largest_id_is_accepted_as_string_and_integer() -> None:
    """2^63-1, PostgreSQL's largest bigint, is still an id in either form."""
    for room in (2**63 - 1, str(2**63 - 1)):
        frame = decode_frame(json.dumps({"type": "join", "room": room}))
        assert isinstance(frame, Join) and as_id(frame.room) == 2**63 - 1


def test_checked_fields_come_from_the_annotations() -> None:
    """Every Id, Body and RoomName field is found for the checks without a list to maintain."""
    assert _checked_fields(Edit).ids == ("room", "id")
    assert _checked_fields(Edit).texts == ("body",)
    assert _checked_fields(Send).strings == ("room", "body", "ref", "client_id", "thread")
    assert _checked_fields(Send).ids == ("room", "thread")
    assert _checked_fields(NewRoom).texts == ("name",)
    assert _checked_fields(Ping).ids == ()


@pytest.mark.parametrize(
    "text",
    ["", " \t\n", "\u200b", "\u2060\ufeff", "\u00ad", "\u115f\u3164", "\ufe0f", "\U000e0041"],
)
def test_invisible_text_is_blank(text: str) -> None:
    """White space, format characters and other default-ignorables show nothing: blank."""
    assert is_blank(text)
    with pytest.raises(FrameError, match="white space"):
        check_body(text)


@pytest.mark.parametrize("text", ["a", "a\u200bb", "\u200b.", "👍\ufe0f", "\u3164x"])
def test_visible_text_is_not_blank(text: str) -> None:
    """One visible character among invisible ones is enough."""
    assert not is_blank(text)
    assert check_body(text) == text


@pytest.mark.parametrize(
    ("raw", "type_", "needle"),
    [
        (b'{"name": "\\u200b"}', NewRoom, "`name` must not be empty or only white space"),
        (b'{"name": " "}', NewRoom, "`name`"),
        (b'{"body": "\\ufeff"}', NewMessage, "`body`"),
        (b'{"body": "x", "client_id": "a\\u0000"}', NewMessage, "`client_id`"),
        (b'{"body": "x", "client_id": "\\ud800"}', NewMessage, "`client_id`"),
    ],
)
def test_http_bodies_get_the_frame_rules(raw: bytes, type_: type, needle: str) -> None:
    """HTTP bodies pass the same checks as frames: NUL, lone surrogates, blank names and bodies."""
    with pytest.raises(FrameError) as info:
        decode_body(raw, type_)
    assert needle in str(info.value)


def test_peek_ref_finds_the_ref_beside_a_lone_surrogate() -> None:
    """A frame refused for a lone surrogate is still answered with its ref."""
    assert peek_ref(b'{"type": "send", "ref": 7, "body": "\\ud800"}') == 7
    assert peek_ref(b'{"type": "send", "ref": "\\ud800"}') is None


def test_body_length_counts_code_points() -> None:
    """4,000 emoji (4 bytes each in UTF-8) is allowed; 4,001 characters is not."""
    assert check_body("😀" * 4000)
    with pytest.raises(FrameError):
        decode_frame(json.dumps({"type": "send", "room": 1, "body": "a" * 4001}))


def test_deep_nesting_is_refused_not_crashing() -> None:
    """A deeply nested frame is an invalid frame, not a crash."""
    raw = '{"type": "ping", "ref": ' + "[" * 10000 + "]" * 10000 + "}"
    with pytest.raises(FrameError):
        decode_frame(raw)


def test_peek_ref_finds_usable_refs_only() -> None:
    """The ref of a bad frame is echoed when it is a short string or a safe integer."""
    assert peek_ref(b'{"type": "send", "ref": 5}') == 5
    assert peek_ref(b'{"type": "send", "ref": "abc"}') == "abc"
    assert peek_ref(b'{"ref": true}') is None
    assert peek_ref(b'{"ref": 1e300}') is None
    assert peek_ref(b'{"ref": "' + b"x" * 500 + b'"}') is None
    assert peek_ref(b"garbage") is None


def test_message_frame_encodes_the_contract_shape() -> None:
    """A message frame has exactly the contract's fields."""
    message = Message(
        id=1,
        room=2,
        seq=3,
        sender=User(id=4, username="alice"),
        body="hi",
        client_id=None,
        ts="2026-11-26T10:00:00.123Z",
    )
    out = json.loads(encode_text(MessageFrame(room=2, message=message)))
    assert out == {
        "type": "message",
        "room": 2,
        "message": {
            "id": 1,
            "room": 2,
            "seq": 3,
            "sender": {"id": 4, "username": "alice", "bot": False},
            "body": "hi",
            "client_id": None,
            "ts": "2026-11-26T10:00:00.123Z",
            "edited_at": None,
            "deleted": False,
            # Part 2, with their defaults.
            "thread": None,
            "reply_count": 0,
            "last_reply_at": None,
            "reactions": [],
            "mentions": [],
            "mention_room": False,
        },
    }


def test_http_body_rules_match_the_frame_rules() -> None:
    """The HTTP message body is checked like the WebSocket one."""
    with pytest.raises(FrameError):
        decode_body(b'{"body": "\\u0000"}', NewMessage)
    with pytest.raises(FrameError, match="`client_id`"):
        decode_body(json.dumps({"body": "x", "client_id": "c" * 65}).encode(), NewMessage)
    assert decode_body(b'{"body": "ok"}', NewMessage).body == "ok"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(JSON)
def test_any_json_value_decodes_or_raises_frame_error(value: object) -> None:
    """Whatever JSON arrives, the decoder returns a frame or raises FrameError, nothing else."""
    raw = msgspec.json.encode(value)
    try:
        decode_frame(raw)
    except FrameError:
        pass


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_frame_error(raw: bytes) -> None:
    """Arbitrary bytes (invalid UTF-8 included) never escape as another exception."""
    try:
        decode_frame(raw)
    except FrameError:
        pass


FRAME_TYPES = ["hello", "join", "leave", "send", "edit", "delete", "typing", "read", "ping"]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(FRAME_TYPES),
    st.dictionaries(
        st.sampled_from(["room", "ref", "since", "body", "client_id", "id", "seq", "token", "x"]),
        JSON,
        max_size=6,
    ),
)
def test_every_frame_type_with_random_fields(kind: str, fields: dict[str, object]) -> None:
    """Every client frame type with random field values decodes to a valid frame or FrameError."""
    raw = msgspec.json.encode({**fields, "type": kind})
    try:
        frame = decode_frame(raw)
    except FrameError:
        return
    body = getattr(frame, "body", None)
    if body is not None:
        assert 0 < len(body) <= 4000 and not is_blank(body) and "\x00" not in body
    room = getattr(frame, "room", 1)
    assert isinstance(room, int | str)
