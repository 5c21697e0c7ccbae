"""Hostile input from the security review (issue 10): poisoned group commits, log floods, blanks.

F1: one send holding a value PostgreSQL refuses (an id above 2^63-1, a NUL) must
fail alone, never the innocent sends that share its batch. F9: a client that
goes away mid-request and a frame with an out-of-range id are no ERROR log
lines. F12: names and bodies made only of invisible characters are `invalid`.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from .support import Api, ServerProcess, Ws

Pair = tuple[ServerProcess, ServerProcess]

BIG = "9223372036854775808"  # 2^63: one above PostgreSQL's bigint


def is_error_line(line: str) -> bool:
    """A line of an ERROR (or worse) record or of a traceback, in the text log format."""
    return line.startswith(("error", "critical")) or "Traceback" in line


def error_lines(server: ServerProcess, since: int) -> list[str]:
    return [line for line in server.lines[since:] if is_error_line(line)]


async def exchange(
    ws: Ws, frames: list[dict[str, Any]], timeout: float = 30
) -> list[dict[str, Any]]:
    """Send all frames at once, each with a fresh ref; their replies, in the frames' order."""
    refs = []
    for frame in frames:
        ref = ws.ref()
        refs.append(ref)
        await ws.send({**frame, "ref": ref})
    replies: dict[int, dict[str, Any]] = {}
    async with asyncio.timeout(timeout):
        while len(replies) < len(refs):
            frame = await ws.frames.get()
            if frame["type"] in ("ok", "error") and frame.get("ref") in refs:
                replies[frame["ref"]] = frame
    return [replies[ref] for ref in refs]


# -- F9: no error-log floods -----------------------------------------------------


async def half_sent(port: int, path: str) -> None:
    """A request whose body stops halfway, after which the client goes away."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Content-Type: application/json\r\nContent-Length: 200\r\n\r\n"
            '{"username": "half'
        ).encode()
    )
    await writer.drain()
    writer.close()
    await writer.wait_closed()


def counted(metrics: str, route: str, status: str) -> float:
    pattern = rf'^chat_http_requests_total\{{route="{re.escape(route)}",status="{status}"\}} (\S+)$'
    found = re.search(pattern, metrics, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def test_client_gone_mid_body_is_no_error(server: ServerProcess, anon: Api) -> None:
    """Half-sent bodies whose clients leave log no ERROR or traceback and count no 500."""
    before = (await anon.raw("GET", "/metrics")).text
    since = len(server.lines)
    paths = ["/api/users", "/api/sessions"] * 20
    await asyncio.gather(*(half_sent(server.port, path) for path in paths))
    # One line per request either way: ERROR before the fix, INFO after.
    await server.wait_for_lines(lambda line: "path=/api/" in line, len(paths), since)
    assert error_lines(server, since) == []
    after = (await anon.raw("GET", "/metrics")).text
    for path in ("/api/users", "/api/sessions"):
        assert counted(after, path, "500") == counted(before, path, "500")
    # The process still answers both routes properly.
    r = await anon.raw("POST", "/api/sessions", json={"username": "nobody", "password": "x" * 8})
    assert r.status_code == 401, r.text
