"""The HTTP accounts API: sign-up, log-in, log-out, bots, and the errors every route shares."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import pytest

from .support import PASSWORD, Api, ServerProcess, Ws


def error(response: httpx.Response) -> tuple[int, str]:
    """The status and contract error code of an error response (checking the body's shape)."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    return response.status_code, body["error"]["code"]


def unique(prefix: str = "u") -> str:
    return f"{prefix}{secrets.token_hex(5)}"


async def sign_up(api: Api, username: str, password: str = PASSWORD) -> httpx.Response:
    return await api.raw("POST", "/api/users", json={"username": username, "password": password})


async def log_in(api: Api, username: str, password: str = PASSWORD) -> httpx.Response:
    return await api.raw("POST", "/api/sessions", json={"username": username, "password": password})


# -- sign-up ------------------------------------------------------------------


async def test_sign_up_returns_the_user(anon: Api) -> None:
    """POST /api/users answers 201 with exactly {"user": {id, username, bot: false}}."""
    name = unique("Sign")
    r = await sign_up(anon, name)
    assert r.status_code == 201, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"user"}
    assert set(body["user"]) == {"id", "username", "bot"}
    assert body["user"]["username"] == name
    assert body["user"]["bot"] is False
    assert isinstance(body["user"]["id"], int | str)


async def test_username_is_kept_as_typed_and_unique_without_regard_to_case(anon: Api) -> None:
    """ "Alice" then "alice" (or "ALICE") is 409 conflict; the first keeps its capitals."""
    name = unique("CaSe")
    first = await sign_up(anon, name)
    assert first.status_code == 201, first.text
    assert first.json()["user"]["username"] == name
    for variant in (name.lower(), name.upper()):
        r = await sign_up(anon, variant, "another password")
        assert error(r) == (409, "conflict"), r.text


async def test_log_in_ignores_case(anon: Api) -> None:
    """Log-in with the username in other case finds the account, reported as typed at sign-up."""
    name = unique("MiXed")
    assert (await sign_up(anon, name)).status_code == 201
    r = await log_in(anon, name.upper())
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"token", "user"}
    assert isinstance(body["token"], str) and body["token"]
    assert body["user"]["username"] == name
    assert body["user"]["bot"] is False


@pytest.mark.parametrize(
    "username",
    [
        "ab",  # too short
        "a" * 33,  # too long
        "",
        "has space",
        "émile",  # not ASCII
        "a@b.c",
        "semi;colon",
        "slash/name",
        "name\n",  # a trailing newline must not slip past the pattern
        "\nname",
        "tab\tname",
        "nul\x00name",
    ],
)
async def test_username_rules_refuse(anon: Api, username: str) -> None:
    """A username outside 3-32 of ASCII letters, digits, `_ . -` is 422 invalid."""
    r = await sign_up(anon, username)
    assert error(r) == (422, "invalid"), r.text


async def test_username_rules_accept_the_edges(anon: Api) -> None:
    """3 and 32 characters, and every allowed punctuation mark, are accepted as typed."""
    tag = secrets.token_hex(4)
    for name in (f"Z{tag[:2]}", f"a.b-c_D{tag}" + "x" * (32 - 7 - len(tag))):
        r = await sign_up(anon, name)
        assert r.status_code == 201, (name, r.text)
        assert r.json()["user"]["username"] == name


@pytest.mark.parametrize("length", [0, 7, 257])
async def test_password_length_refused(anon: Api, length: int) -> None:
    """A password shorter than 8 or longer than 256 characters is 422 invalid."""
    r = await sign_up(anon, unique("pw"), "p" * length)
    assert error(r) == (422, "invalid"), r.text


async def test_password_length_edges_accepted(anon: Api) -> None:
    """Passwords of 8 and of 256 characters (code points, not bytes) sign up and log in."""
    for password in ("p" * 8, "é" * 256):
        name = unique("pw")
        assert (await sign_up(anon, name, password)).status_code == 201
        assert (await log_in(anon, name, password)).status_code == 201


async def test_sign_up_wrong_types_name_the_field(anon: Api) -> None:
    """A field of the wrong type or a missing field is 422 invalid, naming the field."""
    r = await anon.raw("POST", "/api/users", json={"username": 12345, "password": PASSWORD})
    assert error(r) == (422, "invalid")
    assert "username" in r.json()["error"]["message"]
    r = await anon.raw("POST", "/api/users", json={"username": unique(), "password": 12345678})
    assert error(r) == (422, "invalid")
    assert "password" in r.json()["error"]["message"]
    r = await anon.raw("POST", "/api/users", json={"username": unique()})
    assert error(r) == (422, "invalid")
    assert "password" in r.json()["error"]["message"]
    r = await anon.raw("POST", "/api/users", json=["not", "an", "object"])
    assert error(r) == (422, "invalid")


# -- log-in and log-out -------------------------------------------------------


async def test_same_401_for_unknown_user_and_wrong_password(anon: Api) -> None:
    """A wrong password and an unknown username get the very same 401 body."""
    name = unique("known")
    assert (await sign_up(anon, name)).status_code == 201
    wrong = await log_in(anon, name, "not the password")
    unknown = await log_in(anon, unique("nobody"), "not the password")
    assert error(wrong) == (401, "unauthorized")
    assert wrong.status_code == unknown.status_code
    assert wrong.json() == unknown.json()


async def test_nul_in_log_in_is_invalid(anon: Api) -> None:
    """A NUL character in a log-in field is 422 invalid, not a server failure."""
    for username, password in (("nul\x00name", PASSWORD), (unique(), "pass\x00word")):
        assert error(await log_in(anon, username, password)) == (422, "invalid")


async def test_log_in_gives_a_working_token(anon: Api, server: ServerProcess) -> None:
    """The token from POST /api/sessions authenticates, and each log-in gets a new one."""
    name = unique("tok")
    assert (await sign_up(anon, name)).status_code == 201
    first = (await log_in(anon, name)).json()
    second = (await log_in(anon, name)).json()
    assert first["token"] != second["token"]
    api = Api(server.url, first["token"])
    try:
        assert (await api.raw("GET", "/api/rooms")).status_code == 200
    finally:
        await api.close()


async def test_log_out_revokes_the_token_at_once(anon: Api, server: ServerProcess) -> None:
    """DELETE /api/sessions/current is 204; the token then gets 401; other sessions go on."""
    name = unique("out")
    assert (await sign_up(anon, name)).status_code == 201
    one = Api(server.url, (await log_in(anon, name)).json()["token"])
    other = Api(server.url, (await log_in(anon, name)).json()["token"])
    try:
        r = await one.raw("DELETE", "/api/sessions/current")
        assert r.status_code == 204
        assert r.content == b""
        assert error(await one.raw("GET", "/api/rooms")) == (401, "unauthorized")
        assert error(await one.raw("DELETE", "/api/sessions/current")) == (401, "unauthorized")
        assert (await other.raw("GET", "/api/rooms")).status_code == 200
    finally:
        await one.close()
        await other.close()


async def test_log_out_closes_the_tokens_websockets_on_every_process(
    servers: tuple[ServerProcess, ServerProcess], alice: Api
) -> None:
    """Logging out on one process closes the token's WebSocket on the other (4001); 401 there."""
    a, b = servers
    ws = await Ws.connect(b.ws_url, alice.token)
    on_a, on_b = alice.on(a.url), alice.on(b.url)
    try:
        out = await on_a.raw("DELETE", "/api/sessions/current")
        assert out.status_code == 204
        assert await ws.close_code() == 4001
        assert error(await on_b.raw("GET", "/api/rooms")) == (401, "unauthorized")
    finally:
        await ws.close()
        await on_a.close()
        await on_b.close()


async def test_revoked_token_cannot_open_a_websocket(alice: Api, server: ServerProcess) -> None:
    """A logged-out token is refused at hello with unauthorized and close 4001."""
    assert (await alice.raw("DELETE", "/api/sessions/current")).status_code == 204
    ws = await Ws.connect(server.ws_url)
    try:
        await ws.send({"type": "hello", "token": alice.token})
        frame = await ws.expect("error")
        assert frame["code"] == "unauthorized"
        assert await ws.close_code() == 4001
    finally:
        await ws.close()


# -- bots ---------------------------------------------------------------------


async def test_bot_is_created_with_a_working_token(alice: Api, server: ServerProcess) -> None:
    """POST /api/bots is 201 {token, user} with user.bot true, and the token works."""
    name = unique("Bot")
    r = await alice.raw("POST", "/api/bots", json={"username": name})
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"token", "user"}
    assert body["user"]["bot"] is True
    assert body["user"]["username"] == name
    bot = Api(server.url, body["token"], body["user"])
    try:
        room = await alice.create_room("with a bot")
        await alice.add(room["id"], name)
        message = await bot.post(room["id"], "beep")
        assert message["sender"] == body["user"]
        assert (await alice.history(room["id"]))[-1]["sender"]["bot"] is True
    finally:
        await bot.close()


async def test_bot_cannot_log_in_by_password(alice: Api, anon: Api) -> None:
    """A bot's username with any password gets the usual 401 from POST /api/sessions."""
    name = unique("pwbot")
    assert (await alice.raw("POST", "/api/bots", json={"username": name})).status_code == 201
    for password in (PASSWORD, "", "x" * 8):
        assert error(await log_in(anon, name, password)) == (401, "unauthorized")


async def test_bot_username_follows_the_user_rules(alice: Api, anon: Api) -> None:
    """A bot's username is taken without regard to case, and must fit the username rules."""
    name = unique("Taken")
    assert (await sign_up(anon, name)).status_code == 201
    r = await alice.raw("POST", "/api/bots", json={"username": name.lower()})
    assert error(r) == (409, "conflict")
    r = await alice.raw("POST", "/api/bots", json={"username": "no spaces allowed"})
    assert error(r) == (422, "invalid")
    bot = unique("botname")
    assert (await alice.raw("POST", "/api/bots", json={"username": bot})).status_code == 201
    assert error(await sign_up(anon, bot.upper())) == (409, "conflict")


async def test_a_bot_cannot_create_bots(alice: Api) -> None:
    """A bot's token cannot make more bots: only a user owns bots."""
    bot = await alice.request("POST", "/api/bots", 201, json={"username": unique("maker")})
    bot_api = Api(alice.base_url, bot["token"], bot["user"])
    try:
        r = await bot_api.raw("POST", "/api/bots", json={"username": unique("child")})
        assert error(r) == (403, "forbidden")
    finally:
        await bot_api.close()


async def test_bot_needs_a_logged_in_owner(anon: Api) -> None:
    """POST /api/bots without a token is 401."""
    r = await anon.raw("POST", "/api/bots", json={"username": unique("orphan")})
    assert error(r) == (401, "unauthorized")


# -- what every route shares --------------------------------------------------

AUTHED = [
    ("DELETE", "/api/sessions/current", None),
    ("POST", "/api/bots", {"username": "somebot"}),
    ("POST", "/api/rooms", {"name": "r"}),
    ("GET", "/api/rooms", None),
    ("POST", "/api/rooms/1/join", None),
    ("POST", "/api/rooms/1/members", {"username": "someone"}),
    ("DELETE", "/api/rooms/1/members/someone", None),
    ("POST", "/api/dms", {"username": "someone"}),
    ("GET", "/api/rooms/1/messages", None),
    ("POST", "/api/rooms/1/messages", {"body": "hi"}),
    ("GET", "/api/rooms/1/presence", None),
]

BAD_AUTH: list[dict[str, str]] = [
    {},
    {"Authorization": "Bearer not-a-real-token"},
    {"Authorization": "Bearer"},
    {"Authorization": "Basic dXNlcjpwYXNz"},
    {"Authorization": "not-even-a-scheme"},
    {"Authorization": "Bearer " + "x" * 600},
]


@pytest.mark.parametrize(("method", "path", "body"), AUTHED)
async def test_missing_or_bad_token_is_401(
    anon: Api, method: str, path: str, body: dict[str, Any] | None
) -> None:
    """Every route that needs a user answers 401 unauthorized to a missing or bad token."""
    for headers in BAD_AUTH:
        r = await anon.raw(method, path, json=body, headers=headers)
        assert error(r) == (401, "unauthorized"), (headers, r.text)


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("/api/users", b"{not json"),
        ("/api/users", b""),
        ("/api/sessions", b'{"username": "a", "password": '),
        ("/api/users", b"\xff\xfe garbage"),
    ],
)
async def test_body_that_is_not_json_is_400(anon: Api, path: str, content: bytes) -> None:
    """A request body that does not parse as JSON is 400 with code invalid."""
    r = await anon.raw("POST", path, content=content, headers={"content-type": "application/json"})
    assert error(r) == (400, "invalid"), r.text


async def test_not_json_with_a_token_is_400(alice: Api) -> None:
    """An authenticated route also answers 400 invalid to a body that is not JSON."""
    room = await alice.create_room("json")
    for path in ("/api/rooms", f"/api/rooms/{room['id']}/messages", "/api/dms"):
        r = await alice.raw("POST", path, content=b"{'single': 'quotes'}")
        assert error(r) == (400, "invalid"), (path, r.text)


async def test_body_over_64_kib_is_413(anon: Api, alice: Api) -> None:
    """A request body over 64 KiB is 413 too_large, declared or streamed in chunks."""
    big = {"username": unique(), "password": "p" * (65 * 1024)}
    assert error(await anon.raw("POST", "/api/users", json=big)) == (413, "too_large")

    async def chunks() -> Any:
        for _ in range(70):
            yield b" " * 1024
        yield b'{"username": "chunked", "password": "long enough"}'

    r = await anon.raw("POST", "/api/users", content=chunks())
    assert error(r) == (413, "too_large")
    room = await alice.create_room("big")
    r = await alice.raw("POST", f"/api/rooms/{room['id']}/messages", json={"body": "x" * 70000})
    assert error(r) == (413, "too_large")


async def test_body_just_under_64_kib_is_read(anon: Api) -> None:
    """A 64 KiB body is within the limit: it is read and judged on its content (422 here)."""
    padding = 65536 - len('{"username": "x", "password": "long enough", "pad": ""}')
    raw = b'{"username": "x", "password": "long enough", "pad": "' + b"p" * padding + b'"}'
    assert len(raw) == 65536
    r = await anon.raw("POST", "/api/users", content=raw)
    assert error(r) == (422, "invalid"), r.text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/users"),
        ("PUT", "/api/users"),
        ("GET", "/api/sessions"),
        ("GET", "/api/sessions/current"),
        ("POST", "/api/sessions/current"),
        ("DELETE", "/api/rooms"),
        ("PATCH", "/api/rooms/1/messages"),
        ("DELETE", "/api/rooms/1/messages"),
        ("GET", "/api/rooms/1/join"),
        ("GET", "/api/dms"),
        ("POST", "/api/rooms/1/presence"),
        ("POST", "/healthz"),
    ],
)
async def test_wrong_method_is_405_invalid(alice: Api, method: str, path: str) -> None:
    """A method the path does not take is 405 with code invalid."""
    r = await alice.raw(method, path)
    assert error(r) == (405, "invalid"), r.text


async def test_unknown_path_is_404(alice: Api) -> None:
    """A path with no route is 404 not_found in the contract's error shape."""
    assert error(await alice.raw("GET", "/api/nothing-here")) == (404, "not_found")
