"""Signing in with the team's identity provider: JWTs checked with PyJWT.

Two set-ups, chosen by configuration and never by the token: `AUTH_JWT_SECRET`
(HS256 only) or `AUTH_JWT_JWKS_URL` (RS256 and ES256 keys of the provider). A
token's `alg` header only has to agree with that choice (and, for a JWKS, with
the key its `kid` names), so `none`, an HMAC made with a public key, or any
other algorithm is refused. `exp` and `sub` are required; `nbf` is checked when
present; `iss` and `aud` when configured.

The JWKS is cached for `AUTH_JWT_JWKS_TTL`. A `kid` that is not in it fetches
the set again (keys rotate), but at most once per `AUTH_JWT_JWKS_REFETCH`, so a
flood of tokens with made-up `kid`s costs the provider one request per period
and this process nothing but a dictionary look-up. A failed fetch keeps the
keys already known. Tokens are never logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from .config import Settings
from .errors import ChatError

log = logging.getLogger("chat.jwt")

# The algorithms of each set-up, pinned here: a token does not get to choose.
HMAC_ALGORITHMS = ("HS256",)
JWKS_ALGORITHMS = ("RS256", "ES256")
# A JWKS key's type must suit the token's algorithm (an RSA key never checks an ES256 token).
_KEY_TYPES = {"RS256": "RSA", "ES256": "EC"}
# Seconds a JWKS fetch may take.
FETCH_TIMEOUT = 5.0
# The most of a JWKS document read (a provider's is a few KiB).
MAX_JWKS_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified JWT says about its user."""

    # `iss`, or "" for a token without one (allowed when no issuer is configured).
    issuer: str
    subject: str
    # `exp`, in UNIX seconds.
    expires: float
    preferred_username: str | None


def looks_like_jwt(token: str) -> bool:
    """Whether a token has the shape of a JWT (the server's own tokens have no dots)."""
    return token.count(".") == 2 and token.startswith("eyJ")


def _refused(why: str) -> ChatError:
    return ChatError("unauthorized", f"the token was refused: {why}")


class JwtVerifier:
    """Checks JWTs against the configured secret or the provider's keys."""

    def __init__(self, settings: Settings) -> None:
        self.secret = settings.auth_jwt_secret
        self.jwks_url = settings.auth_jwt_jwks_url
        self.issuer = settings.auth_jwt_issuer
        self.audience = settings.auth_jwt_audience
        self.ttl = settings.auth_jwt_jwks_ttl
        self.refetch = settings.auth_jwt_jwks_refetch
        # The provider's keys by `kid`, as last fetched.
        self.keys: dict[str, jwt.PyJWK] = {}
        # When the keys were last fetched (or a fetch was tried), monotonic; None: never.
        self.fetched_at: float | None = None
        # One fetch at a time: tokens that arrive meanwhile wait for its keys.
        self._fetching = asyncio.Lock()
        # Made on first use, so that a server without a JWKS opens no client.
        self._http: httpx.AsyncClient | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.secret or self.jwks_url)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    async def verify(self, token: str) -> Claims:
        """The claims of a valid token; `unauthorized` for anything else."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _refused("it is not a well-formed JWT") from None
        algorithm = header.get("alg")
        if self.secret:
            if algorithm not in HMAC_ALGORITHMS:
                raise _refused("its algorithm is not the one configured")
            key: Any = self.secret
        else:
            if algorithm not in JWKS_ALGORITHMS:
                raise _refused("its algorithm is not one the identity provider's keys use")
            key = await self._key(header.get("kid"), str(algorithm))
        options: dict[str, Any] = {"require": ["exp", "sub"], "verify_aud": bool(self.audience)}
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[str(algorithm)],
                issuer=self.issuer,
                audience=self.audience,
                options=options,  # type: ignore[arg-type]
            )
        except jwt.ExpiredSignatureError:
            raise _refused("it has expired") from None
        except jwt.PyJWTError as exc:
            raise _refused(_reason(exc)) from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > 255:
            raise _refused("its `sub` must be a non-empty string")
        issuer = claims.get("iss", "")
        preferred = claims.get("preferred_username")
        return Claims(
            issuer=issuer if isinstance(issuer, str) else "",
            subject=subject,
            expires=float(claims["exp"]),
            preferred_username=preferred if isinstance(preferred, str) else None,
        )

    async def _key(self, kid: object, algorithm: str) -> Any:
        """The provider's key for this token: by `kid`, fetching the JWKS again if need be."""
        if kid is not None and not isinstance(kid, str):
            raise _refused("its `kid` is not a string")
        now = time.monotonic()
        if self.fetched_at is None or now - self.fetched_at >= self.ttl:
            await self._fetch(force=True)
        found = self._find(kid)
        if found is None:
            # Perhaps a key the provider rotated in since: fetch again, but not too often.
            await self._fetch(force=False)
            found = self._find(kid)
        if found is None:
            raise _refused("no key of the identity provider has its `kid`")
        if found.key_type != _KEY_TYPES[algorithm] or found.algorithm_name != algorithm:
            raise _refused("its algorithm is not the one its key is for")
        return found.key

    def _find(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None:
            # A provider with a single key may leave `kid` out.
            return next(iter(self.keys.values())) if len(self.keys) == 1 else None
        return self.keys.get(kid)

    async def _fetch(self, *, force: bool) -> None:
        """Fetch the JWKS; unless `force`, only if the last try is AUTH_JWT_JWKS_REFETCH old."""
        tried = self.fetched_at
        async with self._fetching:
            if self.fetched_at != tried:
                return  # another token fetched while this one waited: use its keys
            now = time.monotonic()
            if not force and self.fetched_at is not None and now - self.fetched_at < self.refetch:
                return
            self.fetched_at = now
            try:
                self.keys = await self._download()
            except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
                # The keys known so far stay; the next try comes after the refetch period.
                log.warning("the JWKS could not be fetched", extra={"error": type(exc).__name__})

    async def _download(self) -> dict[str, jwt.PyJWK]:
        assert self.jwks_url is not None
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=FETCH_TIMEOUT, trust_env=False)
        response = await self._http.get(self.jwks_url)
        response.raise_for_status()
        if len(response.content) > MAX_JWKS_BYTES:
            raise ValueError("the JWKS is too large")
        document = response.json()
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("the JWKS has no `keys` list")
        keys: dict[str, jwt.PyJWK] = {}
        for item in document["keys"]:
            if not isinstance(item, dict) or item.get("use", "sig") != "sig":
                continue
            algorithm = item.get("alg")
            if algorithm is None:
                algorithm = {"RSA": "RS256", "EC": "ES256"}.get(str(item.get("kty")))
            if algorithm not in JWKS_ALGORITHMS:
                continue  # a key for another algorithm is never used
            try:
                key = jwt.PyJWK(item, algorithm=algorithm)
            except jwt.PyJWTError:
                continue
            keys[str(item.get("kid", ""))] = key
        return keys


def _reason(exc: jwt.PyJWTError) -> str:
    """A short reason for a refused token, without echoing any of it."""
    match exc:
        case jwt.InvalidSignatureError():
            return "its signature is wrong"
        case jwt.InvalidIssuerError():
            return "its issuer is not the configured one"
        case jwt.InvalidAudienceError():
            return "its audience is not this server"
        case jwt.ImmatureSignatureError():
            return "it is not valid yet"
        case jwt.MissingRequiredClaimError():
            return f"it lacks the `{exc.claim}` claim"
        case jwt.InvalidAlgorithmError():
            return "its algorithm is not allowed"
        case _:
            return "it is not a valid JWT"
