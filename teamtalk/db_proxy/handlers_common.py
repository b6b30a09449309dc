"""Helpers shared by the db_proxy_server handlers."""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

from teamtalk.net.connection import Connection
from teamtalk.pdu import Pdu
from teamtalk.protocol import encode_message
from teamtalk.storage import Storage
from teamtalk.storage.messages import MessageStore
from teamtalk.storage.relations import get_relation_id, get_relation_ids

logger = logging.getLogger(__name__)

#: A handler as the Dispatcher calls it: ``await handler(connection, pdu, message)``.
Handler = Callable[[Connection, Pdu, object], Awaitable[None]]
#: Wraps a handler so that each request runs as its own task (see DbProxyServer).
Spawn = Callable[[Handler], Handler]


def send_response(connection: Connection, request: Pdu, service_id: int, command_id: int, message) -> None:
    """Send ``message`` as the response to ``request``: same seq_num, on the same connection.

    The caller copies the request's attach_data into ``message`` so that
    msg_server can route the response to its client connection.
    """
    if not connection.send(encode_message(service_id, command_id, message, request.seq_num)):
        logger.info("dropping response 0x%04x: connection %s is closed", command_id, connection.peer)


async def find_relation_id(storage: Storage, store: MessageStore, user_id: int, peer_id: int) -> int | None:
    """Return the relation id of two users from memory or the database, None if they never talked."""
    if user_id <= 0 or peer_id <= 0 or user_id == peer_id:
        return None
    relate_id = store.cached_relation_id(user_id, peer_id)
    if relate_id is None:
        relate_id = await get_relation_id(storage.slave, user_id, peer_id)
        if relate_id is not None:
            store.remember_relation_id(user_id, peer_id, relate_id)
    return relate_id


async def find_relation_ids(storage: Storage, store: MessageStore, user_id: int,
                            peer_ids: list[int]) -> dict[int, int]:
    """Return ``{peer_id: relate_id}`` for the peers ``user_id`` has talked with."""
    found: dict[int, int] = {}
    missing = []
    for peer_id in peer_ids:
        if peer_id <= 0 or peer_id == user_id:
            continue
        relate_id = store.cached_relation_id(user_id, peer_id)
        if relate_id is None:
            missing.append(peer_id)
        else:
            found[peer_id] = relate_id
    if missing:
        for peer_id, relate_id in (await get_relation_ids(storage.slave, user_id, missing)).items():
            store.remember_relation_id(user_id, peer_id, relate_id)
            found[peer_id] = relate_id
    return found
