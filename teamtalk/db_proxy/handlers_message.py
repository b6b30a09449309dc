"""Messages: store ``IMMsgData`` and serve history requests.

Writes go through one :class:`MessageWriter` task with group commit: the
``CID_MSG_DATA`` handler only checks the message and queues it, and the
writer takes everything queued so far as one batch. It stores the batch's
single-chat messages with :meth:`MessageStore.store_messages` and its group
messages with :meth:`GroupMessageStore.store_messages`, then responds to
each request in queue order. An idle writer starts on a lone message at
once; messages that arrive while a batch is being written wait for the
next batch. So each conversation's (and each group's) messages are
numbered, stored and acknowledged in arrival order, and the responses of
one conversation leave in msg_id order.

A message that is invalid or cannot be stored gets no response: msg_server
then reports no acknowledgement to the client, which may send it again.
That includes a group message to a group that does not exist or from a
user who is not a member, as in the original.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

import trio

from teamtalk.db_proxy.handlers_common import Spawn, find_relation_id, send_response
from teamtalk.db_proxy.handlers_group import GroupReader, add_group_msg_infos
from teamtalk.net.connection import Connection
from teamtalk.pb import IM_BaseDefine as BD
from teamtalk.pb import IM_Message
from teamtalk.pdu import Pdu
from teamtalk.protocol import GROUP_MSG_TYPES, Dispatcher
from teamtalk.storage import Storage
from teamtalk.storage.group_messages import GroupMessageStore, NewGroupMessage, check_new_group_message
from teamtalk.storage.messages import (
    MessageStore,
    NewMessage,
    StoredMessage,
    check_new_message,
    get_latest_msg_id,
    get_messages,
    get_messages_by_id,
)

logger = logging.getLogger(__name__)

#: Max queued messages taken into one batch, which bounds one transaction.
DEFAULT_MAX_BATCH = 1000
#: Max messages waiting for the writer. A connection that delivers a message
#: beyond this stops being read until the writer catches up.
DEFAULT_MAX_QUEUED = 10_000

_KNOWN_MSG_TYPES = frozenset(BD.MsgType.values())


@dataclass(slots=True)
class _Pending:
    connection: Connection
    pdu: Pdu
    request: IM_Message.IMMsgData
    message: NewMessage | NewGroupMessage


class MessageWriter:
    """The single task that stores queued messages in batches and responds to them."""

    def __init__(self, store: MessageStore, *, group_store: GroupMessageStore | None = None,
                 max_batch: int = DEFAULT_MAX_BATCH, max_queued: int = DEFAULT_MAX_QUEUED) -> None:
        self.store = store
        self.group_store = group_store
        self.max_batch = max_batch
        self.max_queued = max_queued
        self.batch_count = 0
        self._queue: deque[_Pending] = deque()
        self._wakeup = trio.lowlevel.ParkingLot()
        self._space = trio.lowlevel.ParkingLot()
        self._idle = trio.lowlevel.ParkingLot()
        self._writing = False

    @property
    def busy(self) -> bool:
        """True while messages are queued or a batch is being written."""
        return self._writing or bool(self._queue)

    async def submit(self, connection: Connection, pdu: Pdu, request: IM_Message.IMMsgData,
                     message: NewMessage | NewGroupMessage) -> None:
        """Queue a checked message; the writer responds on ``connection`` once it is stored.

        Waits while ``max_queued`` messages are queued already.
        """
        while len(self._queue) >= self.max_queued:
            await self._space.park()
        self._queue.append(_Pending(connection, pdu, request, message))
        self._wakeup.unpark_all()

    async def wait_idle(self) -> None:
        """Return once the queue is empty and no batch is being written."""
        while self.busy:
            await self._idle.park()

    async def run(self) -> None:
        """Write batches until cancelled."""
        while True:
            if not self._queue:
                self._idle.unpark_all()
                await self._wakeup.park()
                continue
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), self.max_batch))]
            self._space.unpark_all()
            self._writing = True
            try:
                # Shielded, because msg_ids are taken from the counter before
                # the rows are inserted, so a cancel in between would leave a
                # gap in the conversation. The storage layer bounds each call.
                with trio.CancelScope(shield=True):
                    await self._write(batch)
            except Exception:
                # Storage failures are handled by the store; this is a bug,
                # and the writer must survive it to serve later batches.
                logger.exception("writing a batch of %d messages failed; none gets a response", len(batch))
            finally:
                self._writing = False

    async def _write(self, batch: list[_Pending]) -> None:
        self.batch_count += 1
        single = [pending.message for pending in batch if isinstance(pending.message, NewMessage)]
        group = [pending.message for pending in batch if isinstance(pending.message, NewGroupMessage)]
        if single or self.group_store is None:
            await self.store.store_messages(single)
        if group and self.group_store is not None:
            await self.group_store.store_messages(group)
        stored = 0
        for pending in batch:
            if pending.message.msg_id == 0:
                continue
            stored += 1
            pending.request.msg_id = pending.message.msg_id
            send_response(pending.connection, pending.pdu, BD.SID_MSG, BD.CID_MSG_DATA, pending.request)
        logger.debug("batch %d: stored and acknowledged %d of %d messages", self.batch_count, stored, len(batch))


class MessageHandlers:
    """Handlers of ``SID_MSG`` commands about message content."""

    def __init__(self, storage: Storage, store: MessageStore, writer: MessageWriter,
                 groups: GroupReader | None = None) -> None:
        self.storage = storage
        self.store = store
        self.writer = writer
        self.groups = groups

    def register(self, dispatcher: Dispatcher, spawn: Spawn) -> None:
        dispatcher.add(BD.SID_MSG, BD.CID_MSG_DATA, IM_Message.IMMsgData, self.msg_data)
        dispatcher.add(BD.SID_MSG, BD.CID_MSG_LIST_REQUEST, IM_Message.IMGetMsgListReq,
                       spawn(self.msg_list))
        dispatcher.add(BD.SID_MSG, BD.CID_MSG_GET_BY_MSG_ID_REQ, IM_Message.IMGetMsgByIdReq,
                       spawn(self.msg_by_id))
        dispatcher.add(BD.SID_MSG, BD.CID_MSG_GET_LATEST_MSG_ID_REQ, IM_Message.IMGetLatestMsgIdReq,
                       spawn(self.latest_msg_id))

    async def msg_data(self, connection: Connection, pdu: Pdu, request: IM_Message.IMMsgData) -> None:
        """Check a message and queue it for the writer; invalid ones are dropped without a response."""
        if request.create_time == 0:
            request.create_time = int(time.time())
        if request.msg_type in GROUP_MSG_TYPES:
            await self._group_msg_data(connection, pdu, request)
            return
        message = NewMessage(
            from_id=request.from_user_id,
            to_id=request.to_session_id,
            msg_type=request.msg_type,
            content=request.msg_data,
            create_time=request.create_time,
        )
        error = check_new_message(message, self.store.max_msg_data_length)
        if error:
            logger.info("dropping message %d -> %d from %s: %s",
                        message.from_id, message.to_id, connection.peer, error)
            return
        await self.writer.submit(connection, pdu, request, message)

    async def _group_msg_data(self, connection: Connection, pdu: Pdu, request: IM_Message.IMMsgData) -> None:
        if self.writer.group_store is None:
            logger.info("dropping group message %d -> group %d: group chat is not served",
                        request.from_user_id, request.to_session_id)
            return
        message = NewGroupMessage(
            from_id=request.from_user_id,
            group_id=request.to_session_id,
            msg_type=request.msg_type,
            content=request.msg_data,
            create_time=request.create_time,
        )
        error = check_new_group_message(message, self.writer.group_store.max_msg_data_length)
        if error:
            logger.info("dropping group message %d -> group %d from %s: %s",
                        message.from_id, message.group_id, connection.peer, error)
            return
        await self.writer.submit(connection, pdu, request, message)

    async def msg_list(self, connection: Connection, pdu: Pdu, request: IM_Message.IMGetMsgListReq) -> None:
        response = IM_Message.IMGetMsgListRsp(
            user_id=request.user_id,
            session_type=request.session_type,
            session_id=request.session_id,
            msg_id_begin=request.msg_id_begin,
            attach_data=request.attach_data,
        )
        if request.session_type == BD.SESSION_TYPE_GROUP and self.groups is not None:
            add_group_msg_infos(response.msg_list, await self.groups.history(
                request.user_id, request.session_id, request.msg_id_begin, request.msg_cnt))
        elif request.session_type == BD.SESSION_TYPE_SINGLE:
            relate_id = await find_relation_id(self.storage, self.store, request.user_id, request.session_id)
            if relate_id is not None:
                messages = await get_messages(self.storage.shards, relate_id,
                                              request.msg_id_begin, request.msg_cnt)
                _add_msg_infos(response.msg_list, messages)
        logger.debug("msg list of user %d with %d from %d: %d messages",
                     request.user_id, request.session_id, request.msg_id_begin, len(response.msg_list))
        send_response(connection, pdu, BD.SID_MSG, BD.CID_MSG_LIST_RESPONSE, response)

    async def msg_by_id(self, connection: Connection, pdu: Pdu, request: IM_Message.IMGetMsgByIdReq) -> None:
        response = IM_Message.IMGetMsgByIdRsp(
            user_id=request.user_id,
            session_type=request.session_type,
            session_id=request.session_id,
            attach_data=request.attach_data,
        )
        if request.session_type == BD.SESSION_TYPE_GROUP and self.groups is not None:
            add_group_msg_infos(response.msg_list, await self.groups.by_ids(
                request.user_id, request.session_id, request.msg_id_list))
        elif request.session_type == BD.SESSION_TYPE_SINGLE:
            relate_id = await find_relation_id(self.storage, self.store, request.user_id, request.session_id)
            if relate_id is not None:
                messages = await get_messages_by_id(self.storage.shards, relate_id, request.msg_id_list)
                _add_msg_infos(response.msg_list, messages)
        send_response(connection, pdu, BD.SID_MSG, BD.CID_MSG_GET_BY_MSG_ID_RES, response)

    async def latest_msg_id(self, connection: Connection, pdu: Pdu,
                            request: IM_Message.IMGetLatestMsgIdReq) -> None:
        response = IM_Message.IMGetLatestMsgIdRsp(
            user_id=request.user_id,
            session_type=request.session_type,
            session_id=request.session_id,
            latest_msg_id=0,
            attach_data=request.attach_data,
        )
        if request.session_type == BD.SESSION_TYPE_GROUP and self.groups is not None:
            response.latest_msg_id = await self.groups.latest_msg_id(request.user_id, request.session_id)
        elif request.session_type == BD.SESSION_TYPE_SINGLE:
            relate_id = await find_relation_id(self.storage, self.store, request.user_id, request.session_id)
            if relate_id is not None:
                response.latest_msg_id = await get_latest_msg_id(self.storage.shards, relate_id)
        send_response(connection, pdu, BD.SID_MSG, BD.CID_MSG_GET_LATEST_MSG_ID_RSP, response)


def _add_msg_infos(msg_list, messages: list[StoredMessage]) -> None:
    """Append a MsgInfo per message; rows of an unknown type cannot be encoded and are skipped."""
    for message in messages:
        if message.msg_type not in _KNOWN_MSG_TYPES:
            logger.warning("skipping msg_id %d of relation %d: unknown msg_type %d",
                           message.msg_id, message.relate_id, message.msg_type)
            continue
        msg_list.add(
            msg_id=message.msg_id,
            from_session_id=message.from_id,
            create_time=message.created,
            msg_type=message.msg_type,
            msg_data=message.content,
        )
