"""An echo bot: answers every message in a room with the same text.

    CHAT_URL=http://127.0.0.1:8000 BOT_TOKEN=... CHAT_ROOM=1 python examples/echo_bot.py

Without BOT_TOKEN it logs in as CHAT_USERNAME with CHAT_PASSWORD.
"""

import asyncio
import logging
import os

from chat.client import ChatClient, MessageFrame


async def main() -> None:
    url, room = os.environ.get("CHAT_URL", "http://127.0.0.1:8000"), int(os.environ["CHAT_ROOM"])
    if token := os.environ.get("BOT_TOKEN"):
        client = ChatClient(url, token)
    else:
        name, password = os.environ["CHAT_USERNAME"], os.environ["CHAT_PASSWORD"]
        client = await ChatClient.login(url, name, password)
    async with client:
        await client.join(room)
        async for event in client:
            if isinstance(event, MessageFrame):
                message = event.message
                # Not our own, not another bot's (no echo loops), not a deleted one.
                if message.sender.id != client.user.id and not message.sender.bot and message.body:
                    await client.send(event.room, f"echo: {message.body}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main())
