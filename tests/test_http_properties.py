"""Property tests (hypothesis) for the request parsers and the id and meta checks: any input is
either accepted as a valid value or refused with a 4xx ApiError, never another exception."""
from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from encoders.base import hex_to_code
from rayapp.http import (MAX_ID_BYTES, MAX_META_BYTES, ApiError, bool_param, check_bearer, check_id,
                         check_meta, decode_base64, float_param, int_param, json_item)

ANY = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(),
                st.binary(), st.lists(st.integers(), max_size=3),
                st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))
settings.register_profile("bounded", max_examples=150, deadline=None)
settings.load_profile("bounded")


def _refused_or(fn, *args):
    try:
        return True, fn(*args)
    except ApiError as exc:
        assert 400 <= exc.status < 500 and exc.message
        return False, None


@given(ANY)
def test_int_param_is_an_int_in_range_or_a_4xx(value):
    ok, out = _refused_or(int_param, value, "k", 1, 100)
    assert not ok or (type(out) is int and 1 <= out <= 100)


@given(ANY)
def test_float_param_is_a_number_in_range_or_a_4xx(value):
    ok, out = _refused_or(float_param, value, "min_confidence", 0.0, 1.0)
    assert not ok or 0.0 <= out <= 1.0


@given(ANY)
def test_bool_param_is_a_bool_or_a_4xx(value):
    ok, out = _refused_or(bool_param, value, "with_meta")
    assert not ok or isinstance(out, bool)


@given(ANY)
def test_ids_are_short_printable_strings_or_a_4xx(value):
    ok, out = _refused_or(check_id, value)
    if ok:
        assert isinstance(out, str) and out and len(out.encode("utf-8")) <= MAX_ID_BYTES
        assert not any(ord(c) < 32 or ord(c) == 127 for c in out)


@given(st.one_of(ANY, st.dictionaries(st.text(max_size=20), st.text(max_size=2000), max_size=20)))
def test_meta_is_a_small_json_object_or_a_4xx(value):
    ok, out = _refused_or(check_meta, value)
    assert not ok or out is None or (isinstance(out, dict) and len(json.dumps(out)) <= MAX_META_BYTES)


@given(ANY)
def test_base64_images_decode_or_a_4xx(value):
    ok, out = _refused_or(decode_base64, value)
    assert not ok or isinstance(out, bytes)


@given(st.dictionaries(st.sampled_from(["id", "image", "code", "meta", "k", "radius", "x", "items"]), ANY,
                       max_size=5))
def test_json_items_parse_or_a_4xx(obj):
    _refused_or(json_item, obj, "body")


@given(st.text())
def test_hex_codes_parse_or_a_value_error(text):
    try:
        code = hex_to_code(text, bits=128)
    except ValueError:
        return
    assert len(code) == 16


@given(st.text(max_size=80))
def test_bearer_check_never_accepts_a_wrong_token(header):
    ok, _ = _refused_or(check_bearer, header, ["s3cret"])
    assert not ok or header.partition(" ")[2].strip() == "s3cret"


def test_an_unexpected_bug_is_a_json_500_and_other_answers_pass_through():
    """The ingress's ASGI guard (rayapp.api): a handler that raises gives {"error": ...} with
    500, never a traceback; answers and HTTP errors pass unchanged, status and body."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from rayapp.api import _Guard

    app = FastAPI()

    @app.get("/boom")
    async def boom() -> dict:
        raise RuntimeError("a bug")

    @app.get("/fine")
    async def fine() -> dict:
        return {"ok": True}

    app.add_middleware(_Guard)
    client = TestClient(app, raise_server_exceptions=False)
    r = client.get("/boom")
    assert r.status_code == 500 and r.json() == {"error": "internal server error"}
    assert client.get("/fine").json() == {"ok": True}
    assert client.get("/missing").status_code == 404
