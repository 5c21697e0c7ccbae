"""GET /api/search: the query syntax, who finds what, paging, errors, and safe highlights."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import pytest

from chat.client import HttpApi, ServerError
from chat.search import highlight, parse, terms

from .support import Api, ServerProcess, Ws, schemathesis


def word() -> str:
    """A word no other test (or run) has posted, so results are this test's own."""
    return "w" + secrets.token_hex(5)


async def find(api: Api, q: str, **params: Any) -> list[dict[str, Any]]:
    r = await api.raw("GET", "/api/search", params={"q": q, **params})
    assert r.status_code == 200, r.text
    return list(r.json()["messages"])


async def bodies(api: Api, q: str, **params: Any) -> list[str]:
    return [m["body"] for m in await find(api, q, **params)]


def code(r: httpx.Response) -> tuple[int, str]:
    body = r.json()
    assert set(body) == {"error"}, body
    return r.status_code, body["error"]["code"]


# -- the parser, with plain data ------------------------------------------------


def test_parse_quotes_every_operand() -> None:
    """Words become quoted tsquery operands: operators typed by a user stay text."""
    assert parse("a & b") == "'a' & '&' & 'b'"
    assert parse("it's") == "'it''s'"
    assert parse("back\\slash") == "'back\\\\slash'"
    assert parse("x:* | !y") == "'x:':* & '|' & '!y'"


def test_parse_syntax() -> None:
    """Phrases, exclusions, `or` and prefixes map onto tsquery operators."""
    assert parse('"hello world" -spam') == "'hello world' & !'spam'"
    assert parse("a b or c") == "'a' & ( 'b' | 'c' )"
    assert parse("a OR b or c") == "( 'a' | 'b' | 'c' )"
    assert parse('pre* -"no phrase"') == "'pre':* & !'no phrase'"
    assert parse("or a or") == "'a'"


@pytest.mark.parametrize("q", ["", "   ", "or", "-", "*", '""', '- * or ""', "-- **"])
def test_parse_nothing_to_find(q: str) -> None:
    """An empty or operator-only query has no terms."""
    assert terms(q) == []


def test_highlight_ranges() -> None:
    """ts_headline markers become code-point ranges; a mismatch gives none."""
    assert highlight("Straße 日本語", "\ue000Straße\ue001 \ue000日本語\ue001") == [(0, 6), (7, 10)]
    assert highlight("a b", "\ue000x\ue001 b") == []
    # The body's own marker characters reach ts_headline as U+FFFD.
    assert highlight("\ue000hi", "\ufffd\ue000hi\ue001") == [(1, 3)]


# -- who finds what -------------------------------------------------------------


async def test_finds_every_word_any_case_newest_first(alice: Api) -> None:
    """Every word must match, in any case; results are messages, newest first."""
    w1, w2 = word(), word()
    room = await alice.create_room("s")
    first = await alice.post(room["id"], f"{w1} and {w2}")
    await alice.post(room["id"], f"only {w1}")
    second = await alice.post(room["id"], f"{w2.upper()} then {w1.capitalize()}")
    found = await find(alice, f"{w1} {w2}")
    assert [m["id"] for m in found] == [second["id"], first["id"]]
    hit = found[0]
    assert {k: v for k, v in hit.items() if k != "highlight"} == second
    assert hit["highlight"] == [[0, len(w2)], [len(w2) + 6, len(w2) + 6 + len(w1)]]


async def test_phrase_exclusion_or_prefix(alice: Api) -> None:
    """ "quoted" is a phrase, -word excludes, `or` is either, word* a prefix."""
    w1, w2, w3 = word(), word(), word()
    room = await alice.create_room("syntax")
    await alice.post(room["id"], f"{w1} {w2} next to each other")
    await alice.post(room["id"], f"{w2} apart from {w1}")
    await alice.post(room["id"], f"{w1} with {w3}")
    assert await bodies(alice, f'"{w1} {w2}"') == [f"{w1} {w2} next to each other"]
    assert await bodies(alice, f"{w1} -{w3}") == [
        f"{w2} apart from {w1}",
        f"{w1} {w2} next to each other",
    ]
    assert await bodies(alice, f'{w1} -"{w1} {w2}"') == [f"{w1} with {w3}", f"{w2} apart from {w1}"]
    assert len(await bodies(alice, f"{w3} or {w2}")) == 3
    assert await bodies(alice, f"{w3[:6]}*") == [f"{w1} with {w3}"]
    assert await bodies(alice, w3[:6]) == []


async def test_words_as_written_in_any_language(alice: Api) -> None:
    """No stemming and no stop words: "the", "Straße", "日本語" are found as written."""
    tag = word()
    room = await alice.create_room("lang")
    await alice.post(room["id"], f"{tag} The Straße to 日本語 running")
    for q in ("the", "straße", "STRASSE", "日本語", "running", "run"):
        expected = [] if q in ("STRASSE", "run") else [f"{tag} The Straße to 日本語 running"]
        assert await bodies(alice, f"{tag} {q}") == expected, q


async def test_only_rooms_the_caller_is_a_member_of_now(alice: Api, bob: Api) -> None:
    """Other people's rooms are never searched; a removed member finds nothing more."""
    w = word()
    shared = await alice.create_room("shared")
    await alice.add(shared["id"], bob.username)
    private = await alice.create_room("mine", private=True)
    await alice.post(shared["id"], f"{w} shared")
    await alice.post(private["id"], f"{w} private")
    assert await bodies(bob, w) == [f"{w} shared"]
    assert len(await bodies(alice, w)) == 2
    await alice.request("DELETE", f"/api/rooms/{shared['id']}/members/{bob.username}", 204)
    assert await bodies(bob, w) == []
    r = await bob.raw("GET", "/api/search", params={"q": w, "room": shared["id"]})
    assert code(r) == (403, "forbidden")


async def test_deleted_never_and_edit_reindexes(server: ServerProcess, alice: Api) -> None:
    """A deleted message is never found; an edited one only by its new text."""
    old, new, gone = word(), word(), word()
    room = await alice.create_room("edits")
    edited = await alice.post(room["id"], f"{old} text")
    deleted = await alice.post(room["id"], f"{gone} text")
    ws = await Ws.connect(server.ws_url, alice.token)
    try:
        reply = await ws.call(
            {"type": "edit", "room": room["id"], "id": edited["id"], "body": f"{new} text"}
        )
        assert reply["type"] == "ok", reply
        reply = await ws.call({"type": "delete", "room": room["id"], "id": deleted["id"]})
        assert reply["type"] == "ok", reply
    finally:
        await ws.close()
    assert await bodies(alice, old) == []
    found = await find(alice, new)
    assert [m["id"] for m in found] == [edited["id"]]
    assert found[0]["edited_at"] is not None
    assert await find(alice, gone) == []
    assert await find(alice, "text -" + new) == []


async def test_paging_and_room_filter(alice: Api) -> None:
    """`before` pages on by message id, `limit` bounds a page, `room` narrows the rooms."""
    w = word()
    one = await alice.create_room("one")
    two = await alice.create_room("two")
    sent = [await alice.post((one, two)[n % 2]["id"], f"{w} {n}") for n in range(7)]
    newest_first = [m["id"] for m in reversed(sent)]
    page1 = await find(alice, w, limit=3)
    page2 = await find(alice, w, limit=3, before=page1[-1]["id"])
    page3 = await find(alice, w, limit=3, before=page2[-1]["id"])
    assert [m["id"] for m in page1 + page2 + page3] == newest_first
    assert len(await find(alice, w)) == 7  # default limit 20
    in_two = await find(alice, w, room=two["id"])
    assert [m["id"] for m in in_two] == [m["id"] for m in reversed(sent) if m["room"] == two["id"]]


# -- errors -----------------------------------------------------------------------


@pytest.mark.parametrize("q", ["", "   ", "or", "- * -- **", '""', "!!! ...", "-onlyexcluded"])
async def test_nothing_to_find_is_invalid(alice: Api, q: str) -> None:
    """An empty, operator-only, punctuation-only or exclusion-only query is 422 invalid."""
    r = await alice.raw("GET", "/api/search", params={"q": q})
    assert code(r) == (422, "invalid")


async def test_parameters_and_rooms(alice: Api, bob: Api, anon: Api) -> None:
    """Bad limit/before/room are 422; another's room 403; an unknown room 404; no token 401."""
    room = await alice.create_room("params")
    for params in ({"limit": 0}, {"limit": 101}, {"limit": "x"}, {"before": "-1"}, {"room": "r"}):
        r = await alice.raw("GET", "/api/search", params={"q": "x", **params})
        assert code(r) == (422, "invalid"), params
    r = await bob.raw("GET", "/api/search", params={"q": "x", "room": room["id"]})
    assert code(r) == (403, "forbidden")
    r = await bob.raw("GET", "/api/search", params={"q": "x", "room": 2**62})
    assert code(r) == (404, "not_found")
    r = await anon.raw("GET", "/api/search", params={"q": "x"})
    assert code(r) == (401, "unauthorized")
    r = await alice.raw("GET", "/api/search", params={"q": "x" * 501})
    assert code(r) == (422, "invalid")


@pytest.mark.parametrize(
    "q",
    [
        "a & b | !c",
        "x:* <-> y <2> z",
        "'''",
        "\\",
        "a\\' b'' ('",
        ") ( ! & | < >",
        "word:A*B",
        "é" * 400,
        "a " * 40,
        "x" * 3000,
        "a\x00b",
        "🙂 or 🚀*",
    ],
)
async def test_hostile_queries_never_fail_the_server(alice: Api, q: str) -> None:
    """Whatever q holds (tsquery syntax, quotes, huge words, NUL), the answer is 200 or 422."""
    r = await alice.raw("GET", "/api/search", params={"q": q})
    assert r.status_code in (200, 422), r.text
    if r.status_code == 422:
        assert code(r) == (422, "invalid")


async def test_query_that_is_not_utf8(alice: Api) -> None:
    """Percent-escapes that are no UTF-8 (a lone surrogate, a stray byte) are no 500 either."""
    r = await alice.raw("GET", "/api/search?q=%ED%A0%80%FF")
    assert r.status_code in (200, 422), r.text


async def test_highlight_cannot_inject_markup(alice: Api) -> None:
    """Markup and marker characters in a body come back as text; highlight is only ranges."""
    w = word()
    body = f'<b onmouseover="x()">{w}</b> \ue000{w}\ue001 &amp;'
    room = await alice.create_room("markup")
    await alice.post(room["id"], body)
    [hit] = await find(alice, w)
    assert hit["body"] == body
    ranges = hit["highlight"]
    assert all(isinstance(r, list) and len(r) == 2 for r in ranges)
    assert [body[s:e] for s, e in ranges] == [w, w]


async def test_sdk_search(server: ServerProcess, alice: Api) -> None:
    """HttpApi.search pages with `before`, narrows with `room`, and raises the contract's codes."""
    w = word()
    room = await alice.create_room("sdk")
    sent = [await alice.post(room["id"], f"{w} number {n}") for n in range(3)]
    async with HttpApi(server.url, alice.token) as api:
        first = await api.search(w, limit=2)
        rest = await api.search(w, room=room["id"], before=first[-1].id)
        assert [h.id for h in first + rest] == [m["id"] for m in reversed(sent)]
        assert first[0].body == f"{w} number 2" and first[0].highlight == [(0, len(w))]
        with pytest.raises(ServerError) as caught:
            await api.search("-" + w)
        assert caught.value.code == "invalid"


@pytest.mark.timeout(300)
async def test_schemathesis_on_search(server: ServerProcess, alice: Api) -> None:
    """Fuzzed GET /api/search requests get no 5xx and only documented statuses and shapes."""
    room = await alice.create_room("fuzz")
    await alice.post(room["id"], "some words to find, and <b>markup</b> and 日本語")
    text = await schemathesis(
        server,
        alice.token,
        "--include-path",
        "/api/search",
        "--max-examples",
        "200",
        "--seed",
        "14",
    )
    assert "Selected: 1/" in text
