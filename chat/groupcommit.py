"""Group commit: concurrent sends stored together, each caller answered after its commit.

With nothing in flight a send is stored at once. While a batch is in flight,
sends gather for `WRITE_BATCH_WINDOW` (or until `WRITE_BATCH_SIZE`, or until
all `WRITE_BATCHES` lanes are busy, when they wait for one) and go together:
one statement, one commit, and each caller still returns only after the
commit that stored its message. A batch that fails (a duplicate client_id
raced in from another process, a value PostgreSQL refuses) rolled back whole,
so its sends are stored one by one and only the bad one fails, with its own
error.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from .config import Settings
from .errors import ChatError, unavailable
from .protocol import Message
from .store import Draft, Store

log = logging.getLogger("chat.groupcommit")

Stored = tuple[Message, bool] | None


@dataclass(slots=True)
class _Waiting:
    """A send waiting for its batch, and its caller's future."""

    draft: Draft
    done: asyncio.Future[Stored]


class GroupCommit:
    """Batches sends into shared commits on the store."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        # Sends waiting for a batch, oldest first.
        self._queue: list[_Waiting] = []
        # Batches in flight, and at most how many may be.
        self._inflight = 0
        self._max_inflight = settings.write_batches
        # Sends per batch at most.
        self._batch_size = settings.write_batch_size
        # Seconds sends gather while a batch is in flight.
        self._window = settings.write_batch_window
        # The timer that ends a gathering window, while one runs.
        self._gather: asyncio.TimerHandle | None = None
        # The flushing tasks, referenced so that none is collected mid-flight.
        self._flushes: set[asyncio.Task[None]] = set()

    async def insert(self, draft: Draft) -> Stored:
        """Store a message: (message, created), once durably stored; None for a non-member."""
        done: asyncio.Future[Stored] = asyncio.get_running_loop().create_future()
        self._queue.append(_Waiting(draft, done))
        self._flush_more()
        return await done

    def _flush_more(self, gathered: bool = False) -> None:
        while self._queue and self._inflight < self._max_inflight:
            if (
                not gathered
                and self._inflight
                and self._window > 0
                and len(self._queue) < self._batch_size
            ):
                # A commit is under way: gather what arrives meanwhile into one batch.
                if self._gather is None:
                    self._gather = asyncio.get_running_loop().call_later(
                        self._window, self._gathered
                    )
                return
            if self._gather is not None:
                self._gather.cancel()
                self._gather = None
            batch = self._queue[: self._batch_size]
            del self._queue[: self._batch_size]
            self._inflight += 1
            task = asyncio.ensure_future(self._flush(batch))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    def _gathered(self) -> None:
        self._gather = None
        self._flush_more(gathered=True)

    async def _flush(self, batch: list[_Waiting]) -> None:
        # A caller that gave up (its client left) before the batch ran stores nothing.
        batch = [item for item in batch if not item.done.done()]
        try:
            stored: dict[int, Message] = {}
            if len(batch) > 1:
                try:
                    stored = await self.store.insert_batch([item.draft for item in batch])
                except Exception as exc:
                    if isinstance(exc, ChatError) and exc.code == "unavailable":
                        raise  # one by one, each send would only wait for PostgreSQL again
                    log.debug("batch failed; one by one", extra={"error": type(exc).__name__})
            for index, item in enumerate(batch, 1):
                if item.done.done():
                    continue
                message = stored.get(index)
                if message is not None:
                    item.done.set_result((message, True))
                    continue
                try:
                    result = await self.store.insert_one(item.draft)
                except Exception as exc:  # handed to the waiting caller
                    if not item.done.done():
                        item.done.set_exception(exc)
                else:
                    if not item.done.done():
                        item.done.set_result(result)
        except BaseException as exc:
            for item in batch:
                if not item.done.done():
                    item.done.set_exception(exc if isinstance(exc, Exception) else unavailable())
            if not isinstance(exc, Exception):
                raise
        finally:
            self._inflight -= 1
            self._flush_more()
