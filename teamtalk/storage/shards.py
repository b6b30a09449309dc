"""Message shards: the shard count and the map from shard to database.

Single-chat messages go to ``IMMessage_<relateId % 8>`` and group messages
to ``IMGroupMessage_<groupId % 8>``, as in the original TeamTalk. This
module is the only place that defines the number 8 and which database
instance stores each shard.

A deployment spreads shards over several MySQL servers by giving
:class:`ShardMap` an override per shard index, e.g. shards 4-7 on a second
server::

    ShardMap(master, {4: db2, 5: db2, 6: db2, 7: db2})

Shard ``n`` of single-chat and shard ``n`` of group messages always sit
on the same database. Every other table (users, relations, sessions,
groups) stays on the default database.
"""

from __future__ import annotations

from collections.abc import Mapping

from teamtalk.storage.database import Database

#: Number of IMMessage_n and IMGroupMessage_n tables. Changing it moves
#: existing rows to other table names, so it is fixed by the original schema.
SHARD_COUNT = 8


def shard_of(entity_id: int) -> int:
    """Return the shard index of a relation id or group id."""
    if entity_id < 0:
        raise ValueError(f"id must not be negative, got {entity_id}")
    return entity_id % SHARD_COUNT


def message_table(relate_id: int) -> str:
    """Return the single-chat message table of a relation: ``IMMessage_<n>``."""
    return "IMMessage_%d" % shard_of(relate_id)


def group_message_table(group_id: int) -> str:
    """Return the message table of a group: ``IMGroupMessage_<n>``."""
    return "IMGroupMessage_%d" % shard_of(group_id)


def message_tables() -> list[str]:
    """Return the names of all single-chat message tables, shard 0 first."""
    return ["IMMessage_%d" % shard for shard in range(SHARD_COUNT)]


def group_message_tables() -> list[str]:
    """Return the names of all group message tables, shard 0 first."""
    return ["IMGroupMessage_%d" % shard for shard in range(SHARD_COUNT)]


class ShardMap:
    """Map from shard index to the :class:`Database` holding that shard's tables.

    ``default`` stores every shard without an entry in ``overrides``. The
    map does not own the databases, so the caller that opened them closes them.
    """

    def __init__(self, default: Database, overrides: Mapping[int, Database] | None = None) -> None:
        overrides = dict(overrides or {})
        for shard in overrides:
            if not 0 <= shard < SHARD_COUNT:
                raise ValueError(
                    f"shard index {shard} is out of range: shards are numbered 0 to {SHARD_COUNT - 1}"
                )
        self.default = default
        self._by_shard = [overrides.get(shard, default) for shard in range(SHARD_COUNT)]

    def database_for_shard(self, shard: int) -> Database:
        return self._by_shard[shard]

    def database_for_relation(self, relate_id: int) -> Database:
        """Return the database holding ``message_table(relate_id)``."""
        return self._by_shard[shard_of(relate_id)]

    def database_for_group(self, group_id: int) -> Database:
        """Return the database holding ``group_message_table(group_id)``."""
        return self._by_shard[shard_of(group_id)]

    def databases(self) -> list[Database]:
        """Return each distinct database once, the default first."""
        distinct = [self.default]
        for database in self._by_shard:
            if all(database is not seen for seen in distinct):
                distinct.append(database)
        return distinct
