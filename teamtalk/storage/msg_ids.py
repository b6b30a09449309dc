"""msg_id counters of conversations (relations or groups), kept in the cache.

The original hands out msg_ids with INCR on a cache key per conversation,
so a cache flush or restart starts them at 1 again and ids collide.  These
counters also remember the last id handed out in this process and the
highest stored msgId: a counter that comes back at or below that is set
past it first, so a conversation's ids never repeat and never skip.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable

from teamtalk.storage.cache import Cache

logger = logging.getLogger(__name__)


class MsgIdCounters:
    """Counters of one kind of conversation (``what`` is "relation" or "group").

    ``key_of(id)`` names a conversation's cache key and ``load_stored_max(ids)``
    returns ``{id: highest stored msgId}`` (0 when none is stored).
    """

    def __init__(self, cache: Cache, key_of: Callable[[int], str],
                 load_stored_max: Callable[[list[int]], Awaitable[dict[int, int]]], what: str) -> None:
        self.cache = cache
        self.key_of = key_of
        self.load_stored_max = load_stored_max
        self.what = what
        # Last msg_id handed out (or highest stored) per conversation.
        self._last: dict[int, int] = {}

    def forget(self) -> None:
        """Drop the remembered ids, as a restarted process would start."""
        self._last.clear()

    async def load(self, conversation_ids: Iterable[int]) -> None:
        """Remember the highest stored msgId of conversations not seen before."""
        unknown = sorted({cid for cid in conversation_ids if cid not in self._last})
        if unknown:
            self._last.update(await self.load_stored_max(unknown))

    async def allocate(self, conversation_ids: list[int]) -> tuple[list[int], dict[int, int]]:
        """Take one msg_id per entry of ``conversation_ids`` (in that order) with one INCRBY each.

        Returns the ids in the same order and each conversation's first id.
        Call :meth:`load` for the conversations first.
        """
        counts: dict[int, int] = {}
        for cid in conversation_ids:
            counts[cid] = counts.get(cid, 0) + 1
        ordered = list(counts)
        lasts = await self.cache.pipeline([("incrby", self.key_of(cid), counts[cid]) for cid in ordered])
        first_ids = {}
        behind = []
        for cid, last in zip(ordered, lasts):
            first_ids[cid] = last - counts[cid] + 1
            if first_ids[cid] <= self._last[cid]:
                behind.append(cid)
        if behind:
            first_ids.update(await self._recover(behind, counts))

        next_ids = dict(first_ids)
        ids = []
        for cid in conversation_ids:
            ids.append(next_ids[cid])
            next_ids[cid] += 1
        for cid, next_id in next_ids.items():
            self._last[cid] = next_id - 1
        return ids, first_ids

    async def _recover(self, conversation_ids: list[int], counts: dict[int, int]) -> dict[int, int]:
        """Set counters that went back (the cache lost them) past every used id, then take ids again.

        Each counter is set to the larger of the last id handed out and the
        highest stored msgId, then incremented again for this batch.
        """
        stored = await self.load_stored_max(conversation_ids)
        commands = []
        for cid in conversation_ids:
            base = max(self._last[cid], stored[cid])
            logger.warning("msg_id counter of %s %d is behind (the cache lost it?): continuing after %d",
                           self.what, cid, base)
            commands.append(("set", self.key_of(cid), base))
            commands.append(("incrby", self.key_of(cid), counts[cid]))
        results = await self.cache.pipeline(commands)
        return {cid: results[2 * index + 1] - counts[cid] + 1 for index, cid in enumerate(conversation_ids)}

    async def give_back(self, conversation_ids: Iterable[int], first_ids: dict[int, int]) -> None:
        """Set the counters of conversations whose insert failed back to before this batch."""
        failed = sorted(set(conversation_ids))
        for cid in failed:
            self._last[cid] = first_ids[cid] - 1
        try:
            await self.cache.pipeline([("set", self.key_of(cid), first_ids[cid] - 1) for cid in failed])
        except Exception:
            # The counters now run ahead of the stored rows, which leaves a gap.
            logger.exception("giving back msg_ids of %ss %s failed", self.what, failed)
