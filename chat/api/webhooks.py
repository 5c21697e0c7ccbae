"""HTTP: a bot's outgoing webhook and its deliveries (`chat/webhooks.py`), for its owner."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..protocol import DeliveriesOut, WebhookIn, WebhookOut
from .common import current_user, endpoint, json_response, node_of, query_int, read_body


@endpoint
async def set_webhook(request: Request) -> Response:
    user, _ = await current_user(request)
    body: WebhookIn = await read_body(request, WebhookIn)
    webhook = await node_of(request).webhooks.set(user, request.path_params["username"], body.url)
    return json_response(WebhookOut(webhook=webhook))


@endpoint
async def delete_webhook(request: Request) -> Response:
    user, _ = await current_user(request)
    await node_of(request).webhooks.delete(user, request.path_params["username"])
    return Response(status_code=204)


@endpoint
async def webhook_deliveries(request: Request) -> Response:
    user, _ = await current_user(request)
    limit = query_int(request, "limit", 1, 200) or 50
    found = await node_of(request).webhooks.deliveries(user, request.path_params["username"], limit)
    return json_response(DeliveriesOut(deliveries=found))


ROUTES = [
    Route("/api/bots/{username}/webhook", set_webhook, methods=["PUT"]),
    Route("/api/bots/{username}/webhook", delete_webhook, methods=["DELETE"]),
    Route("/api/bots/{username}/deliveries", webhook_deliveries, methods=["GET"]),
]
