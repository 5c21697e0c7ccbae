"""A webhook bot: the server POSTs each message to it; it checks the signature and replies.

    WEBHOOK_SECRET=whsec_... PORT=9000 python examples/webhook_bot.py

Point the bot's webhook here (its owner does this once; the answer holds the secret):

    curl -X PUT $CHAT_URL/api/bots/$BOT/webhook -H "Authorization: Bearer $OWNER_TOKEN" \
         -H 'Content-Type: application/json' -d '{"url": "https://bot.example.com/hook"}'

It answers `{"reply": TEXT}` to messages that start with `!ping`, which the server
sends to the room as the bot, once per delivery even if the event comes again. A
request whose signature is wrong, or whose timestamp is more than five minutes off
(a replay), gets 401; the server does not retry a 4xx.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

SECRET = os.environ["WEBHOOK_SECRET"]
# Older (or newer) timestamps are refused: a captured request cannot be replayed later.
TOLERANCE = 300


def signed(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """Whether `signature` is `sha256=` + HMAC-SHA256 of `TIMESTAMP.BODY` under the secret."""
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode() + b"." + body, hashlib.sha256)
    # compare_digest: a byte-by-byte comparison would leak how much of a guess was right.
    return hmac.compare_digest(signature, "sha256=" + mac.hexdigest())


async def hook(request: Request) -> Response:
    body = await request.body()  # the exact bytes that were signed, before any parsing
    timestamp = request.headers.get("x-chat-timestamp", "")
    signature = request.headers.get("x-chat-signature", "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > TOLERANCE:
        return JSONResponse({"error": "stale or missing timestamp"}, status_code=401)
    if not signed(SECRET, timestamp, body, signature):
        return JSONResponse({"error": "bad signature"}, status_code=401)
    event = json.loads(body)
    message = event["message"]
    text = message.get("body") or ""
    # Deliveries come at least once: `delivery` is the same id when one comes again.
    if event["event"] == "message" and text.startswith("!ping"):
        return JSONResponse({"reply": f"pong, {message['sender']['username']}"})
    return Response(status_code=204)


app = Starlette(routes=[Route("/hook", hook, methods=["POST"])])

if __name__ == "__main__":
    uvicorn.run(app, host="0.0.0.0", port=int(os.environ.get("PORT", "9000")))
