"""HTTP: sign-up, log-in, log-out, bots and their tokens, blocks."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..protocol import (
    LogIn,
    NewBot,
    SessionOut,
    SignUp,
    UserOut,
    UsersOut,
)
from .common import (
    client_address,
    current_user,
    endpoint,
    json_response,
    node_of,
    read_body,
)


@endpoint
async def sign_up(request: Request) -> Response:
    body: SignUp = await read_body(request, SignUp)
    user = await node_of(request).accounts.sign_up(
        body.username, body.password, client_address(request)
    )
    return json_response(UserOut(user=user), 201)


@endpoint
async def log_in(request: Request) -> Response:
    body: LogIn = await read_body(request, LogIn)
    token, user = await node_of(request).accounts.log_in(
        body.username, body.password, client_address(request)
    )
    return json_response(SessionOut(token=token, user=user), 201)


@endpoint
async def log_out(request: Request) -> Response:
    _, token_hash = await current_user(request)
    await node_of(request).sessions.log_out(token_hash)
    return Response(status_code=204)


@endpoint
async def create_bot(request: Request) -> Response:
    user, _ = await current_user(request)
    body: NewBot = await read_body(request, NewBot)
    token, bot = await node_of(request).accounts.create_bot(user, body.username)
    return json_response(SessionOut(token=token, user=bot), 201)


@endpoint
async def rotate_bot_token(request: Request) -> Response:
    user, _ = await current_user(request)
    token, bot = await node_of(request).sessions.replace_bot_tokens(
        user, request.path_params["username"], rotate=True
    )
    assert token is not None
    return json_response(SessionOut(token=token, user=bot), 201)


@endpoint
async def revoke_bot_tokens(request: Request) -> Response:
    user, _ = await current_user(request)
    await node_of(request).sessions.replace_bot_tokens(
        user, request.path_params["username"], rotate=False
    )
    return Response(status_code=204)


@endpoint
async def list_blocks(request: Request) -> Response:
    user, _ = await current_user(request)
    return json_response(UsersOut(users=await node_of(request).blocks.blocked(user)))


@endpoint
async def block(request: Request) -> Response:
    user, _ = await current_user(request)
    await node_of(request).blocks.block(user, request.path_params["username"])
    return Response(status_code=204)


@endpoint
async def unblock(request: Request) -> Response:
    user, _ = await current_user(request)
    await node_of(request).blocks.unblock(user, request.path_params["username"])
    return Response(status_code=204)


ROUTES = [
    Route("/api/users", sign_up, methods=["POST"]),
    Route("/api/sessions", log_in, methods=["POST"]),
    Route("/api/sessions/current", log_out, methods=["DELETE"]),
    Route("/api/bots", create_bot, methods=["POST"]),
    Route("/api/bots/{username}/token", rotate_bot_token, methods=["POST"]),
    Route("/api/bots/{username}/token", revoke_bot_tokens, methods=["DELETE"]),
    Route("/api/blocks", list_blocks, methods=["GET"]),
    Route("/api/blocks/{username}", block, methods=["PUT"]),
    Route("/api/blocks/{username}", unblock, methods=["DELETE"]),
]
