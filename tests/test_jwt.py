"""Signing in with an identity provider's JWT (issue 15): HS256, a JWKS that rotates, the
claims checked, users provisioned by (iss, sub), expiry and `refresh` on sockets.

Private server processes with AUTH_JWT_* settings; the JWKS is served by the
test's own HTTP server (`webhook_receiver.py`) and changed while they run.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from chat.client import ChatClient

from .support import Api, ServerProcess, Ws
from .webhook_receiver import Receiver, receiving

SECRET = "s3cret-" + "x" * 60
ISSUER = "https://id.example.com/"
AUDIENCE = "chat-test"


def claims(**extra: Any) -> dict[str, Any]:
    """Valid claims for a fresh subject, overridden by `extra` (None removes one)."""
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": f"sub-{secrets.token_hex(6)}",
        "exp": now + 300,
        "iat": now,
        "preferred_username": f"jw{secrets.token_hex(4)}",
    }
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def hs256(**extra: Any) -> str:
    return jwt.encode(claims(**extra), SECRET, algorithm="HS256")


def sized_token(length: int) -> str:
    """A valid HS256 JWT of exactly `length` characters (padded by a claim and a header)."""
    for kid in range(4):  # base64 cannot make every length: the header's size shifts it
        for size in range(length):
            token = jwt.encode(
                claims(pad="p" * size), SECRET, algorithm="HS256", headers={"kid": "k" * kid}
            )
            if len(token) == length:
                return token
            if len(token) > length:
                break
    raise AssertionError(f"no token of {length} characters")


@contextlib.asynccontextmanager
async def jwt_server(env: dict[str, str], name: str) -> AsyncIterator[ServerProcess]:
    server = ServerProcess(env, name)
    try:
        await server.start()
        yield server
    finally:
        await server.stop()


@pytest.fixture(scope="module")
async def hs_server(server_env: dict[str, str], redis_prefix: str) -> AsyncIterator[ServerProcess]:
    """A process taking HS256 JWTs of one issuer and audience, re-checking sessions often."""
    env = {
        **server_env,
        "REDIS_PREFIX": f"{redis_prefix}-jwths",
        "AUTH_JWT_SECRET": SECRET,
        "AUTH_JWT_ISSUER": ISSUER,
        "AUTH_JWT_AUDIENCE": AUDIENCE,
        "ACCESS_RECHECK": "0.2",
        "RECONCILE_INTERVAL": "0.1",
    }
    async with jwt_server(env, "jwt-hs") as server:
        yield server


async def me(base: str, token: str) -> dict[str, Any]:
    """Who the server thinks the token is, over HTTP (a room made and listed)."""
    api = Api(base, token)
    try:
        room = await api.create_room("who")
        return dict(room["created_by"])
    finally:
        await api.close()


async def status_of(base: str, token: str) -> int:
    api = Api(base, token)
    try:
        return (await api.raw("GET", "/api/rooms")).status_code
    finally:
        await api.close()


async def hello_refused(url: str, token: str) -> tuple[dict[str, Any], int | None]:
    ws = await Ws.connect(url)
    await ws.send({"type": "hello", "token": token})
    error = await ws.expect("error")
    await asyncio.wait_for(ws.closed.wait(), 30)
    code = ws.ws.close_code
    return error, code


# -- HS256 ------------------------------------------------------------------------------


async def test_a_jwt_signs_in_over_http_and_websocket_and_provisions_once(
    hs_server: ServerProcess,
) -> None:
    """The first JWT of a subject makes its user named preferred_username; later JWTs of
    that subject are the same user whatever name they carry; hello welcomes them; they
    cannot log in with a password; neither the token nor the secret is logged."""
    sub = f"sub-{secrets.token_hex(6)}"
    name = f"jw{secrets.token_hex(4)}"
    first = await me(hs_server.url, hs256(sub=sub, preferred_username=name))
    assert first["username"] == name and first["bot"] is False
    again = await me(hs_server.url, hs256(sub=sub, preferred_username="someone-else"))
    assert again == first
    token = hs256(sub=sub)
    ws = await Ws.connect(hs_server.ws_url, token)
    assert ws.welcome["user"] == first
    await ws.ws.close()
    # Such a user has no password: a log-in by name is the same 401 as a wrong password.
    api = Api(hs_server.url)
    r = await api.raw("POST", "/api/sessions", json={"username": name, "password": "x" * 12})
    assert r.status_code == 401
    await api.close()
    assert not any(token in line or SECRET in line for line in hs_server.lines)


async def test_taken_or_invalid_preferred_usernames_get_a_made_up_name(
    hs_server: ServerProcess,
) -> None:
    """Another subject with a taken name, or a name that breaks the rule, gets a valid name
    made from it; no preferred_username at all gives one too."""
    name = f"jw{secrets.token_hex(4)}"
    owner = await me(hs_server.url, hs256(preferred_username=name))
    clash = await me(hs_server.url, hs256(preferred_username=name.upper()))
    assert clash["id"] != owner["id"]
    assert clash["username"].lower().startswith(name + "-")
    odd = await me(hs_server.url, hs256(preferred_username="Zoë Smith!"))
    assert odd["username"].startswith("ZoSmith-")
    nameless = await me(hs_server.url, hs256(preferred_username=None))
    assert nameless["username"].startswith("user-")
    # A person signed up with a password still cannot be taken over by a JWT's name.
    person = await Api.new_user(hs_server.url, "pw")
    taken = await me(hs_server.url, hs256(preferred_username=person.username))
    assert taken["id"] != person.user["id"]
    await person.close()


@pytest.mark.parametrize(
    "case",
    [
        "wrong-secret",
        "alg-none",
        "alg-hs512",
        "wrong-issuer",
        "wrong-audience",
        "expired",
        "not-yet-valid",
        "no-sub",
        "no-exp",
        "garbage",
    ],
)
async def test_bad_jwts_are_unauthorized(hs_server: ServerProcess, case: str) -> None:
    """Each bad token is 401 over HTTP and an `unauthorized` error then 4001 at hello."""
    now = int(time.time())
    token = {
        "wrong-secret": lambda: jwt.encode(claims(), "another-" + "y" * 60, algorithm="HS256"),
        "alg-none": lambda: jwt.encode(claims(), None, algorithm="none"),
        "alg-hs512": lambda: jwt.encode(claims(), SECRET, algorithm="HS512"),
        "wrong-issuer": lambda: hs256(iss="https://evil.example.com/"),
        "wrong-audience": lambda: hs256(aud="another-app"),
        "expired": lambda: hs256(exp=now - 5),
        "not-yet-valid": lambda: hs256(nbf=now + 600),
        "no-sub": lambda: hs256(sub=None),
        "no-exp": lambda: hs256(exp=None),
        "garbage": lambda: "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.bad-signature",
    }[case]()
    assert await status_of(hs_server.url, token) == 401
    error, code = await hello_refused(hs_server.ws_url, token)
    assert error["code"] == "unauthorized"
    assert code == 4001


async def test_tokens_up_to_4096_characters_and_server_tokens_side_by_side(
    hs_server: ServerProcess,
) -> None:
    """A 4,096-character JWT works at hello and over HTTP, 4,097 does not; a password
    log-in's own token works on the same server."""
    token = sized_token(4096)
    ws = await Ws.connect(hs_server.ws_url, token)
    assert ws.welcome["type"] == "welcome"
    await ws.ws.close()
    assert await status_of(hs_server.url, token) == 200
    assert await status_of(hs_server.url, token + "x") == 401
    person = await Api.new_user(hs_server.url, "pw")
    ws = await Ws.connect(hs_server.ws_url, person.token)
    assert ws.welcome["user"] == person.user
    await ws.ws.close()
    await person.close()


# -- expiry, refresh and the session re-check -------------------------------------------


async def test_expiry_closes_4001_unless_refreshed(hs_server: ServerProcess) -> None:
    """Two sockets of one user whose JWT expires in 2 s: the one that sent `refresh` with a
    later JWT stays open, the other is closed with 4001 when its token expires."""
    sub = f"sub-{secrets.token_hex(6)}"
    soon = int(time.time()) + 2
    lapsing = await Ws.connect(hs_server.ws_url, hs256(sub=sub, exp=soon))
    kept = await Ws.connect(hs_server.ws_url, hs256(sub=sub, exp=soon))
    reply = await kept.call({"type": "refresh", "token": hs256(sub=sub)})
    assert reply["type"] == "ok"
    await asyncio.wait_for(lapsing.closed.wait(), 30)
    assert lapsing.ws.close_code == 4001
    assert (await kept.call({"type": "ping"}))["type"] == "pong"
    await kept.ws.close()


async def test_refresh_needs_a_valid_jwt_of_the_same_user(hs_server: ServerProcess) -> None:
    """`refresh` with another user's JWT is forbidden, with a bad one unauthorized, on a
    server-token socket invalid; the socket stays open each time."""
    ws = await Ws.connect(hs_server.ws_url, hs256())
    other = await ws.call({"type": "refresh", "token": hs256()})
    assert other["type"] == "error" and other["code"] == "forbidden"
    bad = await ws.call({"type": "refresh", "token": hs256(exp=int(time.time()) - 5)})
    assert bad["type"] == "error" and bad["code"] == "unauthorized"
    assert (await ws.call({"type": "ping"}))["type"] == "pong"
    person = await Api.new_user(hs_server.url, "pw")
    plain = await Ws.connect(hs_server.ws_url, person.token)
    refused = await plain.call({"type": "refresh", "token": hs256()})
    assert refused["type"] == "error" and refused["code"] == "invalid"
    await plain.ws.close()
    await ws.ws.close()
    await person.close()


async def test_session_recheck_spares_jwt_sockets(
    hs_server: ServerProcess, database_url: str
) -> None:
    """The periodic session re-check closes a server-token socket whose session row is gone,
    and leaves a JWT socket (which has no session row) open."""
    person = await Api.new_user(hs_server.url, "pw")
    plain = await Ws.connect(hs_server.ws_url, person.token)
    signed = await Ws.connect(hs_server.ws_url, hs256())
    conn = await asyncpg.connect(database_url)
    try:
        # Ended behind the server's back: no log-out publication, only the re-check sees it.
        await conn.execute("DELETE FROM sessions WHERE user_id = $1", person.user["id"])
    finally:
        await conn.close()
    await asyncio.wait_for(plain.closed.wait(), 30)
    assert plain.ws.close_code == 4001
    assert (await signed.call({"type": "ping"}))["type"] == "pong"
    await signed.ws.close()
    await person.close()


# -- JWKS: RS256, ES256, rotation, unknown kids -----------------------------------------


class Provider:
    """An identity provider's keys, published as a JWKS by the test's HTTP server."""

    def __init__(self, receiver: Receiver, path: str = "/jwks") -> None:
        self.receiver = receiver
        self.path = path
        self.keys: dict[str, Any] = {}
        self.publish()

    def add_rsa(self, kid: str) -> None:
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.publish()

    def add_ec(self, kid: str) -> None:
        self.keys[kid] = ec.generate_private_key(ec.SECP256R1())
        self.publish()

    def remove(self, kid: str) -> None:
        del self.keys[kid]
        self.publish()

    def publish(self) -> None:
        jwks = []
        for kid, key in self.keys.items():
            if isinstance(key, rsa.RSAPrivateKey):
                jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True) | {"alg": "RS256"}
            else:
                jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True) | {"alg": "ES256"}
            jwks.append(jwk | {"kid": kid, "use": "sig"})
        self.receiver.documents[self.path] = json.dumps({"keys": jwks}).encode()

    def token(self, kid: str, algorithm: str | None = None, **extra: Any) -> str:
        key = self.keys[kid]
        alg = algorithm or ("RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256")
        return jwt.encode(claims(**extra), key, algorithm=alg, headers={"kid": kid})

    @property
    def fetches(self) -> int:
        return len(self.receiver.at(self.path))


@contextlib.asynccontextmanager
async def jwks_server(
    server_env: dict[str, str], redis_prefix: str, refetch: str
) -> AsyncIterator[tuple[ServerProcess, Provider]]:
    async with receiving() as receiver:
        provider = Provider(receiver)
        provider.add_rsa("rsa-1")
        env = {
            **server_env,
            "REDIS_PREFIX": f"{redis_prefix}-jwks{secrets.token_hex(3)}",
            "AUTH_JWT_JWKS_URL": receiver.url(provider.path),
            "AUTH_JWT_ISSUER": ISSUER,
            "AUTH_JWT_AUDIENCE": AUDIENCE,
            "AUTH_JWT_JWKS_REFETCH": refetch,
        }
        async with jwt_server(env, "jwt-jwks") as server:
            yield server, provider


async def test_jwks_keys_rotate_while_the_server_runs(
    server_env: dict[str, str], redis_prefix: str
) -> None:
    """RS256 and ES256 tokens of the provider's keys are accepted; a key added later is
    found by refetching on its unknown kid; a removed key's tokens stop working once the
    set is fetched again; an HS256 token made with the public key, a token whose alg does
    not match its key, and one signed by a key the provider never published are refused."""
    async with jwks_server(server_env, redis_prefix, refetch="0.01") as (server, provider):
        sub = f"sub-{secrets.token_hex(6)}"
        user = await me(server.url, provider.token("rsa-1", sub=sub))
        provider.add_ec("ec-2")
        assert await me(server.url, provider.token("ec-2", sub=sub)) == user
        ws = await Ws.connect(server.ws_url, provider.token("ec-2"))
        assert ws.welcome["type"] == "welcome"
        await ws.ws.close()
        # Algorithm confusion: the RSA public key (PEM) used as an HMAC secret.
        public = provider.keys["rsa-1"].public_key()
        pem = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

        # PyJWT refuses to sign with a PEM as an HMAC key, so the token is made by hand.
        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        head = b64(json.dumps({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}).encode())
        body = b64(json.dumps(claims()).encode())
        mac = hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
        assert await status_of(server.url, f"{head}.{body}.{b64(mac)}") == 401
        # An ES256 header on the RSA key's kid.
        provider.add_ec("unpublished")
        mismatched = jwt.encode(
            claims(), provider.keys["unpublished"], algorithm="ES256", headers={"kid": "rsa-1"}
        )
        assert await status_of(server.url, mismatched) == 401
        # A key the provider rotated out: refused once the set is fetched again.
        old = provider.token("rsa-1")
        provider.remove("rsa-1")
        provider.remove("unpublished")
        provider.add_rsa("rsa-3")
        assert await status_of(server.url, provider.token("rsa-3")) == 200
        assert await status_of(server.url, old) == 401


async def test_unknown_kids_refetch_the_jwks_at_most_once_per_period(
    server_env: dict[str, str], redis_prefix: str
) -> None:
    """A flood of tokens with made-up kids fetches the JWKS once (not once per token)
    within AUTH_JWT_JWKS_REFETCH, and each is refused."""
    async with jwks_server(server_env, redis_prefix, refetch="3600") as (server, provider):
        assert await status_of(server.url, provider.token("rsa-1")) == 200
        before = provider.fetches
        provider.add_rsa("spare")
        tokens = []
        for i in range(30):
            token = provider.token("spare")
            head, rest = token.split(".", 1)
            header = json.loads(jwt.utils.base64url_decode(head))
            header["kid"] = f"made-up-{i}"
            forged = jwt.utils.base64url_encode(json.dumps(header).encode()).decode()
            tokens.append(forged + "." + rest)
        codes = await asyncio.gather(*(status_of(server.url, t) for t in tokens))
        assert set(codes) == {401}
        assert provider.fetches - before <= 1


# -- the SDK ----------------------------------------------------------------------------


async def test_the_sdk_refreshes_its_jwt_through_the_bots_callback(
    hs_server: ServerProcess,
) -> None:
    """ChatClient calls `refresh_token` ahead of expiry and sends `refresh`: a socket opened
    with the same short-lived token but no refresh (the canary) is closed with 4001,
    while the client's stays up, unreconnected, and still sends."""
    sub = f"sub-{secrets.token_hex(6)}"
    short = hs256(sub=sub, exp=int(time.time()) + 3)
    asked = asyncio.Event()

    async def fresh() -> str:
        asked.set()
        return hs256(sub=sub)

    canary = await Ws.connect(hs_server.ws_url, short)
    client = ChatClient(hs_server.url, short, refresh_token=fresh, refresh_margin=2)
    try:
        await asyncio.wait_for(client.start(), 30)
        room = await me(hs_server.url, hs256(sub=sub))  # the same user, over HTTP
        assert room["id"] == client.user.id
        await asyncio.wait_for(asked.wait(), 30)
        await asyncio.wait_for(canary.closed.wait(), 30)
        assert canary.ws.close_code == 4001
        api = Api(hs_server.url, hs256(sub=sub))
        made = await api.create_room("sdk")
        await api.close()
        await asyncio.wait_for(client.join(int(made["id"])), 30)
        message = await asyncio.wait_for(client.send(int(made["id"]), "still here"), 30)
        assert message.body == "still here"
        assert client.reconnects == 0
    finally:
        await client.close()
