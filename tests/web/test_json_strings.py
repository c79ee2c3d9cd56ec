"""``utf8_json_string``: the fast JSON string literal for output bytes, checked against ``json``."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from codebuddy.web.json import dumps, utf8_json_string, utf8_json_string_parts
from codebuddy.web.sse import format_event, format_json_frame

# Bytes that exercise every branch: escapes, rare controls, UTF-8 fragments, invalid bytes.
INTERESTING = st.sampled_from([b"\\", b'"', b"\n", b"\r", b"\t", b"\x1b", b"\x00", b"\x07", b"\x7f",
                               "é".encode(), "😀".encode(), "😀".encode()[:2], b"\xff", b"abc", b" "])
OUTPUT = st.lists(st.one_of(INTERESTING, st.binary(max_size=8)), max_size=40).map(b"".join)


@given(OUTPUT)
def test_same_text_as_json_module(data: bytes) -> None:
    """Whatever the bytes, the literal parses back to ``data.decode("utf-8", "replace")``."""
    literal = utf8_json_string(data)
    assert json.loads(literal) == data.decode("utf-8", "replace")
    assert b"\n" not in literal and b"\r" not in literal
    assert b"".join(utf8_json_string_parts(data)) == literal


def test_common_output_takes_the_byte_path() -> None:
    """Printable text with the usual escapes is escaped on bytes, byte for byte what json gives."""
    data = 'a "quoted" \\ path\r\n\ttab \x1b[1mbold\x1b[0m é 😀\n'.encode()
    assert utf8_json_string_parts(data)[0] == b'"'
    assert json.loads(utf8_json_string(data)) == data.decode()
    assert utf8_json_string(b"plain") == dumps("plain")


def test_json_frame_matches_format_event() -> None:
    """The bytes frame builder gives the same frame as the general one."""
    payload = '{"stdout":"x\\ny"}'
    assert format_json_frame(payload.encode(), event="data", id=42) == format_event(payload, event="data", id=42)
    assert format_json_frame(b'{"a":', b"1", b"}", event="end") == format_event('{"a":1}', event="end")


def test_a_list_field_takes_only_an_array() -> None:
    """cattrs would structure "abc" as ["a", "b", "c"] and an object as its keys: both are 400s."""
    import attrs
    import pytest

    from codebuddy.web.errors import ApiError
    from codebuddy.web.json import structure

    @attrs.define
    class Body:
        values: list[str]

    assert structure({"values": ["abc"]}, Body) == Body(["abc"])
    for bad, message in (("abc", "expected an array, got a string"), ({"a": 1}, "expected an array, got an object")):
        with pytest.raises(ApiError) as caught:
            structure({"values": bad}, Body)
        assert caught.value.details == [{"field": "values", "message": message}]
