"""The HTTP half of the client: accounts, bots, rooms and history over `httpx`.

`HttpApi` is one user's view of the API (a token and a connection pool); the
module-level functions are one-shot conveniences for scripts. Every error body
becomes a `ServerError` with the contract's code.
"""

from __future__ import annotations

from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import msgspec

from ..protocol import (
    AuditEntry,
    AuditOut,
    Ban,
    BansOut,
    DirectoryOut,
    DirectoryRoom,
    ErrorOut,
    Member,
    MemberOut,
    MembersOut,
    Message,
    MessageOut,
    MessagesOut,
    Reaction,
    ReactionsOut,
    Room,
    RoomOut,
    RoomsOut,
    RoomSummary,
    SessionOut,
    ThreadItem,
    ThreadsOut,
    User,
    UserOut,
    UsersOut,
)
from ..search import Hit, HitsOut
from .errors import ServerError

T = TypeVar("T")


def http_base(url: str) -> str:
    """`http://host:port` for any of `http(s)://host:port[/]` or `ws(s)://host:port/ws`."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http(s):// or ws(s):// URL, got {url!r}")
    path = parts.path.rstrip("/")
    path = path.removesuffix("/ws")
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def ws_url(url: str) -> str:
    """The WebSocket endpoint (`ws(s)://host:port/ws`) of a server's URL."""
    base = urlsplit(http_base(url))
    scheme = "wss" if base.scheme == "https" else "ws"
    return urlunsplit((scheme, base.netloc, base.path + "/ws", "", ""))


def _seg(text: str) -> str:
    """A path segment: a username is sent as typed, never as more of the path."""
    return quote(text, safe="")


class HttpApi:
    """One user's view of the HTTP API; `token` may be set later (by `log_in`)."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 10.0) -> None:
        # The server's base URL, `http(s)://host:port`.
        self.url = http_base(url)
        # The bearer token of the user, once known.
        self.token = token
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout)

    async def __aenter__(self) -> HttpApi:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def raw(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Any request as this user, its response as it came (for what has no method here).

        `kwargs` are httpx's (`json=`, `params=`, `content=`, `headers=`); the token's
        `Authorization` header is added unless `headers` names one.
        """
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        headers.update(kwargs.pop("headers", None) or {})
        return await self._http.request(method, path, headers=headers, **kwargs)

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, int | str] | None = None,
    ) -> bytes:
        headers = {}
        content = None
        if json is not None:
            content = msgspec.json.encode(json)
            headers["Content-Type"] = "application/json"
        response = await self.raw(method, path, content=content, params=params, headers=headers)
        if response.status_code >= 400:
            try:
                error = msgspec.json.decode(response.content, type=ErrorOut).error
                code, message = error.code, error.message
            except msgspec.DecodeError:
                code, message = "internal", response.text[:200] or response.reason_phrase
            raise ServerError(code, message, response.status_code)
        return response.content

    async def _call(
        self,
        type_: type[T],
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, int | str] | None = None,
    ) -> T:
        content = await self._request(method, path, json=json, params=params)
        return msgspec.json.decode(content, type=type_)

    async def sign_up(self, username: str, password: str) -> User:
        """Create an account; `ServerError` `conflict` when the name is taken."""
        body = {"username": username, "password": password}
        out = await self._call(UserOut, "POST", "/api/users", json=body)
        return out.user

    async def log_in(self, username: str, password: str) -> SessionOut:
        """Open a session; this `HttpApi` uses its token from now on."""
        body = {"username": username, "password": password}
        out = await self._call(SessionOut, "POST", "/api/sessions", json=body)
        self.token = out.token
        return out

    async def log_out(self) -> None:
        """Revoke this token; its WebSockets are closed with 4001."""
        await self._request("DELETE", "/api/sessions/current")

    async def create_bot(self, username: str) -> SessionOut:
        """A bot account owned by this user, with its own token."""
        return await self._call(SessionOut, "POST", "/api/bots", json={"username": username})

    async def rotate_bot_token(self, username: str) -> SessionOut:
        """A new token for a bot you own; its old tokens stop and their sockets close (4001)."""
        return await self._call(SessionOut, "POST", f"/api/bots/{_seg(username)}/token")

    async def revoke_bot_tokens(self, username: str) -> None:
        """End every token of a bot you own; its sockets close with 4001."""
        await self._request("DELETE", f"/api/bots/{_seg(username)}/token")

    async def block(self, username: str) -> None:
        """Stop `username` from opening a DM with you or adding you to rooms."""
        await self._request("PUT", f"/api/blocks/{_seg(username)}")

    async def unblock(self, username: str) -> None:
        await self._request("DELETE", f"/api/blocks/{_seg(username)}")

    async def blocks(self) -> list[User]:
        """The users you blocked."""
        out = await self._call(UsersOut, "GET", "/api/blocks")
        return out.users

    async def create_room(self, name: str, private: bool = False) -> Room:
        body = {"name": name, "private": private}
        out = await self._call(RoomOut, "POST", "/api/rooms", json=body)
        return out.room

    async def rooms(self) -> list[RoomSummary]:
        out = await self._call(RoomsOut, "GET", "/api/rooms")
        return out.rooms

    async def join_room(self, room: int) -> Room:
        """Become a member of a public room (joining it on a WebSocket does that too)."""
        out = await self._call(RoomOut, "POST", f"/api/rooms/{room}/join")
        return out.room

    async def add_member(self, room: int, username: str) -> Room:
        body = {"username": username}
        out = await self._call(RoomOut, "POST", f"/api/rooms/{room}/members", json=body)
        return out.room

    async def remove_member(self, room: int, username: str) -> None:
        """Leave a room (your own name), or remove someone from a room you created."""
        await self._request("DELETE", f"/api/rooms/{room}/members/{_seg(username)}")

    async def dm(self, username: str) -> Room:
        """The direct-message room with `username`; its `dm` is that user."""
        out = await self._call(RoomOut, "POST", "/api/dms", json={"username": username})
        return out.room

    async def history(
        self,
        room: int,
        *,
        before: int | None = None,
        after: int | None = None,
        limit: int = 50,
        thread: int | None = None,
    ) -> list[Message]:
        """Stored messages, ascending: the newest (below `before`), or the oldest above `after`;
        with `thread`, only that root's replies."""
        params: dict[str, int | str] = {"limit": limit}
        if before is not None:
            params["before"] = before
        if after is not None:
            params["after"] = after
        if thread is not None:
            params["thread"] = thread
        out = await self._call(MessagesOut, "GET", f"/api/rooms/{room}/messages", params=params)
        return out.messages

    async def search(
        self,
        q: str,
        *,
        room: int | None = None,
        before: int | None = None,
        limit: int = 20,
    ) -> list[Hit]:
        """Messages matching `q` in this user's rooms (or `room`), newest first.

        The syntax is the server's: `"a phrase"`, `-excluded`, `a or b`, `prefix*`.
        Each `Hit` is a `Message` plus `highlight`, `[start, end)` code-point
        ranges of `body`. The next page: `before=hits[-1].id`.
        """
        params: dict[str, int | str] = {"q": q, "limit": limit}
        if room is not None:
            params["room"] = room
        if before is not None:
            params["before"] = before
        out = await self._call(HitsOut, "GET", "/api/search", params=params)
        return out.messages

    async def post(
        self, room: int, body: str, client_id: str | None = None, *, thread: int | None = None
    ) -> Message:
        """Send a message over HTTP (the same as a WebSocket send, fan-out included); a
        reply in `thread` if given."""
        payload: dict[str, str | int] = {"body": body}
        if client_id is not None:
            payload["client_id"] = client_id
        if thread is not None:
            payload["thread"] = thread
        out = await self._call(MessageOut, "POST", f"/api/rooms/{room}/messages", json=payload)
        return out.message

    # -- finding and running rooms ---------------------------------------------

    async def directory(self, q: str = "", limit: int = 50) -> list[DirectoryRoom]:
        """Public rooms whose name or topic contains `q` (any case), most members first."""
        params: dict[str, int | str] = {"limit": limit}
        if q:
            params["q"] = q
        out = await self._call(DirectoryOut, "GET", "/api/rooms/directory", params=params)
        return out.rooms

    async def update_room(
        self,
        room: int,
        *,
        name: str | None = None,
        topic: str | None = None,
        slow_mode: int | None = None,
    ) -> Room:
        """Change what is given (owner and moderators); joined sockets get `room_updated`."""
        fields = {"name": name, "topic": topic, "slow_mode": slow_mode}
        body = {key: value for key, value in fields.items() if value is not None}
        out = await self._call(RoomOut, "PATCH", f"/api/rooms/{room}", json=body)
        return out.room

    async def members(self, room: int, *, after: int = 0, limit: int = 200) -> list[Member]:
        """The room's members and their roles, by user id from `after`."""
        params: dict[str, int | str] = {"after": after, "limit": limit}
        out = await self._call(MembersOut, "GET", f"/api/rooms/{room}/members", params=params)
        return out.members

    async def set_role(self, room: int, username: str, role: str) -> Member:
        """Make a member a `moderator` or a `member` again (the owner only)."""
        path = f"/api/rooms/{room}/members/{_seg(username)}/role"
        out = await self._call(MemberOut, "PUT", path, json={"role": role})
        return out.member

    async def mute(self, room: int, username: str, seconds: int) -> None:
        """Refuse a member's sends and edits for `seconds` (1-2,592,000)."""
        body = {"username": username, "seconds": seconds}
        await self._request("POST", f"/api/rooms/{room}/mutes", json=body)

    async def unmute(self, room: int, username: str) -> None:
        await self._request("DELETE", f"/api/rooms/{room}/mutes/{_seg(username)}")

    async def ban(self, room: int, username: str, reason: str = "") -> None:
        """Remove someone and keep them out until `unban`."""
        body = {"username": username, "reason": reason}
        await self._request("POST", f"/api/rooms/{room}/bans", json=body)

    async def unban(self, room: int, username: str) -> None:
        await self._request("DELETE", f"/api/rooms/{room}/bans/{_seg(username)}")

    async def bans(self, room: int) -> list[Ban]:
        out = await self._call(BansOut, "GET", f"/api/rooms/{room}/bans")
        return out.bans

    async def audit(self, room: int, limit: int = 50) -> list[AuditEntry]:
        """The room's moderation log, newest first (owner and moderators)."""
        params: dict[str, int | str] = {"limit": limit}
        out = await self._call(AuditOut, "GET", f"/api/rooms/{room}/audit", params=params)
        return out.entries

    async def react(self, room: int, message_id: int, emoji: str) -> list[Reaction]:
        """Add your `emoji` to a message; the message's whole new list of reactions."""
        path = f"/api/rooms/{room}/messages/{message_id}/reactions/{_seg(emoji)}"
        return (await self._call(ReactionsOut, "PUT", path)).reactions

    async def unreact(self, room: int, message_id: int, emoji: str) -> list[Reaction]:
        """Take back your `emoji`; the message's whole new list of reactions."""
        path = f"/api/rooms/{room}/messages/{message_id}/reactions/{_seg(emoji)}"
        return (await self._call(ReactionsOut, "DELETE", path)).reactions

    async def threads(self, limit: int = 20) -> list[ThreadItem]:
        """Threads you follow that have replies, most recent reply first, with unread counts."""
        out = await self._call(ThreadsOut, "GET", "/api/threads", params={"limit": limit})
        return out.threads

    async def mentions(self, *, before: int | None = None, limit: int = 20) -> list[Message]:
        """Messages mentioning you (or @room), newest first; page on with `before` (an id)."""
        params: dict[str, int | str] = {"limit": limit}
        if before is not None:
            params["before"] = before
        out = await self._call(MessagesOut, "GET", "/api/mentions", params=params)
        return out.messages


# One-shot conveniences: each opens and closes its own connection pool.


async def sign_up(url: str, username: str, password: str) -> User:
    async with HttpApi(url) as api:
        return await api.sign_up(username, password)


async def log_in(url: str, username: str, password: str) -> SessionOut:
    async with HttpApi(url) as api:
        return await api.log_in(username, password)


async def create_bot(url: str, token: str, username: str) -> SessionOut:
    async with HttpApi(url, token) as api:
        return await api.create_bot(username)


async def create_room(url: str, token: str, name: str, private: bool = False) -> Room:
    async with HttpApi(url, token) as api:
        return await api.create_room(name, private)


async def history(
    url: str,
    token: str,
    room: int,
    *,
    before: int | None = None,
    after: int | None = None,
    limit: int = 50,
) -> list[Message]:
    async with HttpApi(url, token) as api:
        return await api.history(room, before=before, after=after, limit=limit)
