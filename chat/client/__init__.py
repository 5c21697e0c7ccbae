"""A client for bots and load tests: `ChatClient` over the WebSocket, `HttpApi` over HTTP.

    async with await ChatClient.login(url, "echo", "password") as client:
        await client.join(room)
        async for event in client:
            if isinstance(event, MessageFrame) and event.message.sender.id != client.user.id:
                await client.send(event.room, f"echo: {event.message.body}")

Events are the server's frames as `chat.protocol` types; see docs/client.md for
the reconnect, resume and close-code behaviour. Nothing else of `chat` imports
this package, so the server never needs `httpx`.
"""

from ..protocol import (
    AuditEntry,
    Ban,
    DeletedFrame,
    DirectoryRoom,
    EditedFrame,
    Member,
    Message,
    MessageFrame,
    NotifyFrame,
    OkJoin,
    PresenceDiffFrame,
    PresenceFrame,
    Reaction,
    ReactionsFrame,
    RemovedFrame,
    Room,
    RoomAddedFrame,
    RoomSummary,
    RoomUpdatedFrame,
    SessionOut,
    ThreadItem,
    TypingFrame,
    User,
)
from ..search import Hit
from .core import ChatClient
from .errors import ClientClosed, ClientError, ConnectionStopped, ServerError
from .frames import Event, backoff_delay, decode_server_frame
from .http import HttpApi, create_bot, create_room, history, log_in, sign_up

__all__ = [
    "AuditEntry",
    "Ban",
    "ChatClient",
    "ClientClosed",
    "ClientError",
    "ConnectionStopped",
    "DeletedFrame",
    "DirectoryRoom",
    "EditedFrame",
    "Event",
    "Hit",
    "HttpApi",
    "Member",
    "Message",
    "MessageFrame",
    "NotifyFrame",
    "OkJoin",
    "PresenceDiffFrame",
    "PresenceFrame",
    "Reaction",
    "ReactionsFrame",
    "RemovedFrame",
    "Room",
    "RoomAddedFrame",
    "RoomSummary",
    "RoomUpdatedFrame",
    "ServerError",
    "SessionOut",
    "ThreadItem",
    "TypingFrame",
    "User",
    "backoff_delay",
    "create_bot",
    "create_room",
    "decode_server_frame",
    "history",
    "log_in",
    "sign_up",
]
