"""Schemathesis against /openapi.json: generated requests find no server error and every
response matches the documented statuses, content types and schemas."""

from __future__ import annotations

import pytest

from .support import Api, ServerProcess, schemathesis


@pytest.mark.timeout(300)
async def test_schemathesis_finds_no_server_error(server: ServerProcess, alice: Api) -> None:
    """Every operation of the OpenAPI document, fuzzed and chained, gets no 5xx and no
    response outside the document."""
    await schemathesis(
        server,
        alice.token,
        "--max-examples",
        "25",
        "--exclude-path",
        "/api/sessions/current",
        "--seed",
        "1",
    )
