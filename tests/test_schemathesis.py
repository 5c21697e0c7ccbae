"""Schemathesis against /openapi.json: generated requests find no server error and every
response matches the documented statuses, content types and schemas."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import pytest

from .support import Api, ServerProcess


@pytest.mark.timeout(300)
async def test_schemathesis_finds_no_server_error(server: ServerProcess, alice: Api) -> None:
    """Every operation of the OpenAPI document, fuzzed and chained, gets no 5xx and no
    response outside the document."""
    cli = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    proc = await asyncio.create_subprocess_exec(
        cli,
        "run",
        f"{server.url}/openapi.json",
        "-H",
        f"Authorization: Bearer {alice.token}",
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_schema_conformance",
        "--max-examples",
        "25",
        "--exclude-path",
        "/api/sessions/current",
        "--seed",
        "1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]
    assert "passed" in text
