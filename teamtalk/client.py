"""A Trio client of the TeamTalk protocol, used by tests, benchmarks and `teamtalk chat`.

Strategy: a ``Client`` owns one TCP stream to a msg_server and runs three
background tasks in its own nursery. The receive task feeds bytes into a
sans-I/O ``PduReader`` and routes each PDU. A PDU whose seq_num and command
match a pending request completes that request, and every other PDU is a
server push that goes, as an ``Event``, into a memory channel. The writer task
drains an outgoing buffer with one ``send_all`` per batch, so the receive task
never blocks on a send. The heartbeat task queues ``CID_OTHER_HEARTBEAT`` every
``heartbeat_interval`` seconds, as the original clients do.

Like a real client, ``Client`` answers every delivered ``IMMsgData`` with an
``IMMsgDataAck`` at once (``auto_ack``), and hashes the plain password to
lowercase MD5 hex before sending it in ``IMLoginReq``.

Finding a msg_server is separate: ``fetch_msg_server`` asks the login_server's
HTTP port, ``fetch_msg_server_tcp`` its PDU port, and ``open_client`` chains
the HTTP look-up, the connection and the login.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

import trio
from google.protobuf.message import DecodeError, Message

from teamtalk.errors import ProtocolError
from teamtalk.pb import IM_BaseDefine as BD
from teamtalk.pb import IM_Buddy, IM_File, IM_Group, IM_Login, IM_Message, IM_Other, IM_SwitchService
from teamtalk.pdu import DEFAULT_MAX_PDU_LENGTH, PduReader
from teamtalk.protocol import HEARTBEAT_PDU, encode_message

logger = logging.getLogger(__name__)

DEFAULT_CLIENT_VERSION = "teamtalk-py"
DEFAULT_HEARTBEAT_INTERVAL = 30.0  # seconds, as the original clients
DEFAULT_REQUEST_TIMEOUT = 10.0  # seconds
DEFAULT_CONNECT_TIMEOUT = 10.0  # seconds
DEFAULT_WRITE_TIMEOUT = 30.0  # seconds for one send_all
DEFAULT_MAX_EVENTS = 100_000  # server pushes buffered before new ones are dropped
DEFAULT_MAX_SEND_BUFFER = 1 << 20  # bytes queued before senders wait
MAX_HTTP_RESPONSE = 64 * 1024  # bytes accepted from login_server's /msg_server
RECEIVE_SIZE = 65536

_SEQ_NUM_MAX = 0xFFFF
_UINT32_MAX = 0xFFFFFFFF
_MD5_HEX = re.compile(r"[0-9a-f]{32}")

# Message class of every PDU a client may receive, by (service_id, command_id).
INCOMING_MESSAGES: dict[tuple[int, int], type[Message]] = {
    (BD.SID_LOGIN, BD.CID_LOGIN_RES_MSGSERVER): IM_Login.IMMsgServRsp,
    (BD.SID_LOGIN, BD.CID_LOGIN_RES_USERLOGIN): IM_Login.IMLoginRes,
    (BD.SID_LOGIN, BD.CID_LOGIN_RES_LOGINOUT): IM_Login.IMLogoutRsp,
    (BD.SID_LOGIN, BD.CID_LOGIN_KICK_USER): IM_Login.IMKickUser,
    (BD.SID_LOGIN, BD.CID_LOGIN_RES_DEVICETOKEN): IM_Login.IMDeviceTokenRsp,
    (BD.SID_LOGIN, BD.CID_LOGIN_RES_KICKPCCLIENT): IM_Login.IMKickPCClientRsp,
    (BD.SID_LOGIN, BD.CID_LOGIN_RES_PUSH_SHIELD): IM_Login.IMPushShieldRsp,
    (BD.SID_LOGIN, BD.CID_LOGIN_RES_QUERY_PUSH_SHIELD): IM_Login.IMQueryPushShieldRsp,
    (BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_RECENT_CONTACT_SESSION_RESPONSE): IM_Buddy.IMRecentContactSessionRsp,
    (BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_STATUS_NOTIFY): IM_Buddy.IMUserStatNotify,
    (BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_USER_INFO_RESPONSE): IM_Buddy.IMUsersInfoRsp,
    (BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_REMOVE_SESSION_RES): IM_Buddy.IMRemoveSessionRsp,
    (BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_ALL_USER_RESPONSE): IM_Buddy.IMAllUserRsp,
    (BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_USERS_STATUS_RESPONSE): IM_Buddy.IMUsersStatRsp,
    (BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_CHANGE_AVATAR_RESPONSE): IM_Buddy.IMChangeAvatarRsp,
    (BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_PC_LOGIN_STATUS_NOTIFY): IM_Buddy.IMPCLoginStatusNotify,
    (BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_REMOVE_SESSION_NOTIFY): IM_Buddy.IMRemoveSessionNotify,
    (BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_DEPARTMENT_RESPONSE): IM_Buddy.IMDepartmentRsp,
    (BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_AVATAR_CHANGED_NOTIFY): IM_Buddy.IMAvatarChangedNotify,
    (BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_CHANGE_SIGN_INFO_RESPONSE): IM_Buddy.IMChangeSignInfoRsp,
    (BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_SIGN_INFO_CHANGED_NOTIFY): IM_Buddy.IMSignInfoChangedNotify,
    (BD.SID_MSG, BD.CID_MSG_DATA): IM_Message.IMMsgData,
    (BD.SID_MSG, BD.CID_MSG_DATA_ACK): IM_Message.IMMsgDataAck,
    (BD.SID_MSG, BD.CID_MSG_READ_NOTIFY): IM_Message.IMMsgDataReadNotify,
    (BD.SID_MSG, BD.CID_MSG_TIME_RESPONSE): IM_Message.IMClientTimeRsp,
    (BD.SID_MSG, BD.CID_MSG_UNREAD_CNT_RESPONSE): IM_Message.IMUnreadMsgCntRsp,
    (BD.SID_MSG, BD.CID_MSG_LIST_RESPONSE): IM_Message.IMGetMsgListRsp,
    (BD.SID_MSG, BD.CID_MSG_GET_LATEST_MSG_ID_RSP): IM_Message.IMGetLatestMsgIdRsp,
    (BD.SID_MSG, BD.CID_MSG_GET_BY_MSG_ID_RES): IM_Message.IMGetMsgByIdRsp,
    (BD.SID_GROUP, BD.CID_GROUP_NORMAL_LIST_RESPONSE): IM_Group.IMNormalGroupListRsp,
    (BD.SID_GROUP, BD.CID_GROUP_INFO_RESPONSE): IM_Group.IMGroupInfoListRsp,
    (BD.SID_GROUP, BD.CID_GROUP_CREATE_RESPONSE): IM_Group.IMGroupCreateRsp,
    (BD.SID_GROUP, BD.CID_GROUP_CHANGE_MEMBER_RESPONSE): IM_Group.IMGroupChangeMemberRsp,
    (BD.SID_GROUP, BD.CID_GROUP_SHIELD_GROUP_RESPONSE): IM_Group.IMGroupShieldRsp,
    (BD.SID_GROUP, BD.CID_GROUP_CHANGE_MEMBER_NOTIFY): IM_Group.IMGroupChangeMemberNotify,
    (BD.SID_FILE, BD.CID_FILE_RESPONSE): IM_File.IMFileRsp,
    (BD.SID_FILE, BD.CID_FILE_NOTIFY): IM_File.IMFileNotify,
    (BD.SID_FILE, BD.CID_FILE_HAS_OFFLINE_RES): IM_File.IMFileHasOfflineRsp,
    (BD.SID_SWITCH_SERVICE, BD.CID_SWITCH_P2P_CMD): IM_SwitchService.IMP2PCmdMsg,
    (BD.SID_OTHER, BD.CID_OTHER_HEARTBEAT): IM_Other.IMHeartBeat,
}


class ClientError(Exception):
    """A TeamTalk client operation failed: the base of this module's errors."""


class LoginRefused(ClientError):
    """msg_server rejected IMLoginReq with a non-zero ``result_code`` (a ResultType)."""

    def __init__(self, result_code: int, result_string: str = "") -> None:
        self.result_code = result_code
        self.result_string = result_string
        super().__init__(f"login rejected: {_enum_name(BD.ResultType, result_code)} "
                         f"(result_code={result_code}) {result_string}".rstrip())


class MsgServerUnavailable(ClientError):
    """login_server has no msg_server to offer: ``code`` is its non-zero code or result_code."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"login_server has no msg_server for us: code={code} {message}".rstrip())


class ConnectionClosed(ClientError):
    """The connection is closed, by either side, and ``reason`` gives the cause."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"connection closed: {reason}")


class ClientTimeout(ClientError, trio.TooSlowError):
    """A response, an event or a connection did not arrive in time."""


@dataclass(frozen=True, slots=True)
class Event:
    """A PDU that the server pushed, or a response that no request was waiting for.

    ``message`` is the parsed protobuf message, or None for a command that is
    not in ``INCOMING_MESSAGES``. ``body`` contains the raw protobuf body either way.
    """

    service_id: int
    command_id: int
    seq_num: int
    message: Message | None
    body: bytes

    @property
    def name(self) -> str:
        """Message type name, e.g. ``IMMsgData``, or the command id in hex."""
        if self.message is not None:
            return type(self.message).__name__
        return f"command 0x{self.command_id:04x}"


class _Pending:
    """A request waiting for the response with its seq_num and command."""

    __slots__ = ("service_id", "command_id", "message_class", "done", "response", "error")

    def __init__(self, service_id: int, command_id: int, message_class: type[Message]) -> None:
        self.service_id = service_id
        self.command_id = command_id
        self.message_class = message_class
        self.done = trio.Event()
        self.response: Message | None = None
        self.error: ClientError | None = None

    def resolve(self, body: bytes) -> None:
        message = self.message_class()
        try:
            message.ParseFromString(body)
        except DecodeError as exc:
            self.error = ClientError(f"response body is not a valid {self.message_class.__name__}: {exc}")
        else:
            self.response = message
        self.done.set()

    def fail(self, error: ClientError) -> None:
        self.error = error
        self.done.set()


def md5_hex(password: str | bytes) -> str:
    """Return the lowercase MD5 hex of a plain password, as the original clients send it."""
    if isinstance(password, str):
        password = password.encode("utf-8")
    return hashlib.md5(password).hexdigest()


def _enum_name(enum_type, value: int) -> str:
    try:
        return enum_type.Name(value)
    except ValueError:
        return str(value)


def _check_id(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 1 <= value <= _UINT32_MAX:
        raise ValueError(f"{name} {value} is out of the range 1..{_UINT32_MAX}")
    return value


def _check_session_type(session_type: int) -> int:
    if session_type not in (BD.SESSION_TYPE_SINGLE, BD.SESSION_TYPE_GROUP):
        raise ValueError(f"session_type {session_type!r} is neither SESSION_TYPE_SINGLE (1) "
                         f"nor SESSION_TYPE_GROUP (2)")
    return session_type


def _single_exception(group: BaseExceptionGroup) -> BaseException:
    """Return the one exception inside ``group``, or the group if it contains several."""
    if len(group.exceptions) == 1:
        return group.exceptions[0]
    return group


async def _open_stream(host: str, port: int, timeout: float, what: str) -> trio.SocketStream:
    """Open a TCP stream, turning failures into ClientError / ClientTimeout."""
    try:
        with trio.fail_after(timeout):
            return await trio.open_tcp_stream(host, port)
    except trio.TooSlowError:
        raise ClientTimeout(f"connecting to {what} {host}:{port} timed out after {timeout} s") from None
    except OSError as exc:
        raise ClientError(f"cannot connect to {what} {host}:{port}: {exc}") from exc


class Client:
    """One connection to a msg_server, logged in with ``login``.

    Open it with ``async with Client.connect(host, port) as client:``. The
    context manager owns the stream and the background tasks: on exit it
    waits up to ``write_timeout`` for queued PDUs to be sent, then cancels the
    tasks and closes the stream. When the server closes the connection,
    ``closed`` becomes true, ``close_reason`` gives the cause, waiting requests raise
    ConnectionClosed, and the event channel ends after its buffered events.

    All methods must be called from tasks of the Trio run that opened the
    client. Requests time out after ``request_timeout`` seconds unless a call
    passes its own timeout, and then raise ClientTimeout.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        heartbeat_interval: float | None = DEFAULT_HEARTBEAT_INTERVAL,
        max_pdu_length: int = DEFAULT_MAX_PDU_LENGTH,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        auto_ack: bool = True,
        max_events: int = DEFAULT_MAX_EVENTS,
        max_send_buffer: int = DEFAULT_MAX_SEND_BUFFER,
        first_seq_num: int = 1,
    ) -> None:
        if heartbeat_interval is not None and heartbeat_interval <= 0:
            raise ValueError(f"heartbeat_interval must be positive seconds or None, not {heartbeat_interval!r}")
        if not 1 <= first_seq_num <= _SEQ_NUM_MAX:
            raise ValueError(f"first_seq_num {first_seq_num} is out of the range 1..{_SEQ_NUM_MAX}")
        self.host = host
        self.port = port
        self.peer = f"{host}:{port}"
        self.heartbeat_interval = heartbeat_interval
        self.max_pdu_length = max_pdu_length
        self.request_timeout = request_timeout
        self.write_timeout = write_timeout
        self.auto_ack = auto_ack
        self.max_send_buffer = max_send_buffer

        # Set by a successful login.
        self.user_id = 0
        self.user_info: BD.UserInfo | None = None
        self.online_status = 0
        self.server_time = 0

        # Connection state.
        self.closed = False
        self.close_reason = ""
        self.kick_reason: int | None = None

        # Counters, for tests and benchmarks.
        self.heartbeats_sent = 0
        self.heartbeats_received = 0
        self.acks_sent = 0
        self.dropped_events = 0
        self.bad_bodies = 0

        self.other_events: list[Event] = []
        self._events_send, self.events_receive = trio.open_memory_channel[Event](max_events)
        self._pending: dict[int, _Pending] = {}
        self._seq_num = first_seq_num - 1  # the last seq_num handed out
        self._stream: trio.abc.Stream | None = None
        self._background: trio.CancelScope | None = None
        self._closed_event = trio.Event()
        self._outgoing = bytearray()
        self._writing = False
        self._writer_wakeup = trio.lowlevel.ParkingLot()
        self._drained = trio.lowlevel.ParkingLot()

    # ------------------------------------------------------------------
    # Opening and closing

    @classmethod
    @asynccontextmanager
    async def connect(cls, host: str, port: int, *, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                      **options: Any) -> AsyncIterator["Client"]:
        """Connect to a msg_server and yield a running, not yet logged-in Client.

        ``options`` are the keyword arguments of ``Client``. Raises ClientError
        when the connection fails and ClientTimeout after ``connect_timeout``
        seconds.
        """
        client = cls(host, port, **options)
        stream = await _open_stream(host, port, connect_timeout, "msg_server")
        async with client._running(stream):
            yield client

    @asynccontextmanager
    async def _running(self, stream: trio.abc.Stream) -> AsyncIterator["Client"]:
        self._stream = stream
        error = None
        try:
            async with trio.open_nursery() as nursery:
                self._background = await nursery.start(self._run_background)
                try:
                    yield self
                except BaseException:
                    self._close("closed by the client")
                    raise
                else:
                    await self.flush()
                    self._close("closed by the client")
        except BaseExceptionGroup as group:
            # The background tasks end by closing, never by raising, so the
            # group normally holds just the exception of the caller's block,
            # which is raised again unwrapped (outside this handler, so that
            # the group does not become its context).
            error = _single_exception(group)
            if error is group:
                raise
        finally:
            await trio.aclose_forcefully(stream)
        if error is not None:
            raise error

    async def _run_background(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive_loop)
                nursery.start_soon(self._write_loop)
                if self.heartbeat_interval is not None:
                    nursery.start_soon(self._heartbeat_loop)
                task_status.started(scope)

    async def aclose(self) -> None:
        """Send what is queued (for up to ``write_timeout``), then close the connection."""
        if not self.closed:
            await self.flush()
            self._close("closed by the client")
        if self._stream is not None:
            await trio.aclose_forcefully(self._stream)

    async def wait_closed(self, timeout: float | None = None) -> str:
        """Wait until the connection is closed and return ``close_reason``.

        Raises ClientTimeout if it is still open after ``timeout`` seconds.
        """
        with trio.move_on_after(self._timeout(timeout)):
            await self._closed_event.wait()
        if not self.closed:
            raise ClientTimeout(f"connection to {self.peer} still open after {self._timeout(timeout)} s")
        return self.close_reason

    async def flush(self) -> None:
        """Wait up to ``write_timeout`` seconds until every queued PDU is written to the socket."""
        with trio.move_on_after(self.write_timeout):
            while (self._outgoing or self._writing) and not self.closed:
                await self._drained.park()

    def _close(self, reason: str) -> None:
        """Mark the connection closed, fail waiting requests and stop the background tasks.

        The first reason wins. The stream itself is closed by the task that
        noticed the failure, or by the context manager.
        """
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        logger.info("connection to msg_server %s closed: %s", self.peer, reason)
        pending, self._pending = self._pending, {}
        for request in pending.values():
            request.fail(ConnectionClosed(reason))
        self._events_send.close()
        self._writer_wakeup.unpark_all()
        self._drained.unpark_all()
        if self._background is not None:
            self._background.cancel()
        self._closed_event.set()

    @property
    def pending_count(self) -> int:
        """Number of requests waiting for their responses."""
        return len(self._pending)

    def _timeout(self, timeout: float | None) -> float:
        return self.request_timeout if timeout is None else timeout

    # ------------------------------------------------------------------
    # Background tasks

    async def _receive_loop(self) -> None:
        reader = PduReader(self.max_pdu_length)
        try:
            while True:
                data = await self._stream.receive_some(RECEIVE_SIZE)
                if not data:
                    break
                reader.feed(data)
                for pdu in reader:
                    self._handle_pdu(pdu)
        except ProtocolError as exc:
            reason = f"protocol error from msg_server: {exc}"
            logger.warning("closing connection to msg_server %s: %s", self.peer, exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            reason = f"connection lost: {exc or type(exc).__name__}"
        else:
            if self.kick_reason is not None:
                reason = f"kicked by the server ({_enum_name(BD.KickReasonType, self.kick_reason)})"
            else:
                reason = "server closed the connection"
        self._close(reason)
        await trio.aclose_forcefully(self._stream)

    async def _write_loop(self) -> None:
        try:
            while True:
                while not self._outgoing:
                    await self._writer_wakeup.park()
                data, self._outgoing = self._outgoing, bytearray()
                self._writing = True
                with trio.fail_after(self.write_timeout):
                    await self._stream.send_all(data)
                self._writing = False
                self._drained.unpark_all()
        except trio.TooSlowError:
            reason = f"sending to msg_server timed out after {self.write_timeout} s"
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            reason = f"connection lost while sending: {exc or type(exc).__name__}"
        self._close(reason)
        await trio.aclose_forcefully(self._stream)

    async def _heartbeat_loop(self) -> None:
        while True:
            await trio.sleep(self.heartbeat_interval)
            try:
                self._queue(HEARTBEAT_PDU)
            except ConnectionClosed:
                return
            self.heartbeats_sent += 1

    # ------------------------------------------------------------------
    # Sending

    def _queue(self, data: bytes) -> None:
        """Append one encoded PDU to the outgoing buffer; raise ConnectionClosed if closed."""
        if self.closed:
            raise ConnectionClosed(self.close_reason)
        self._outgoing += data
        self._writer_wakeup.unpark_all()

    async def _send(self, data: bytes) -> None:
        """Queue one encoded PDU, waiting while more than ``max_send_buffer`` bytes are queued."""
        self._queue(data)
        if len(self._outgoing) <= self.max_send_buffer:
            await trio.lowlevel.checkpoint()
            return
        while len(self._outgoing) > self.max_send_buffer and not self.closed:
            await self._drained.park()
        if self.closed:
            raise ConnectionClosed(self.close_reason)

    async def send_message(self, service_id: int, command_id: int, message: Message, seq_num: int = 0) -> None:
        """Send one PDU that expects no response (e.g. IMMsgDataReadAck)."""
        await self._send(encode_message(service_id, command_id, message, seq_num))

    def _next_seq_num(self) -> int:
        """Return the next seq_num: 1..65535, wrapping, skipping 0 and those still pending."""
        for _ in range(_SEQ_NUM_MAX):
            self._seq_num = self._seq_num % _SEQ_NUM_MAX + 1
            if self._seq_num not in self._pending:
                return self._seq_num
        raise ClientError(f"all {_SEQ_NUM_MAX} seq_num values are waiting for responses")

    async def request(self, service_id: int, command_id: int, message: Message, response_command_id: int,
                      *, response_class: type[Message] | None = None, timeout: float | None = None) -> Message:
        """Send a request and return the response with the same seq_num and ``response_command_id``.

        The response must come in the same service. ``response_class`` defaults
        to the class listed in ``INCOMING_MESSAGES``. Raises ClientTimeout after
        ``timeout`` seconds (``request_timeout`` by default), ConnectionClosed
        when the connection closes first, and ClientError for a response body
        that does not parse. Cancelling the caller forgets the request.
        """
        if response_class is None:
            response_class = INCOMING_MESSAGES.get((service_id, response_command_id))
            if response_class is None:
                raise ValueError(f"no message class is known for response command 0x{response_command_id:04x}; "
                                 f"pass response_class")
        timeout = self._timeout(timeout)
        seq_num = self._next_seq_num()
        pending = _Pending(service_id, response_command_id, response_class)
        # Registered before sending, so that even an immediate response finds it.
        self._pending[seq_num] = pending
        try:
            await self._send(encode_message(service_id, command_id, message, seq_num))
            with trio.move_on_after(timeout):
                await pending.done.wait()
        finally:
            if self._pending.get(seq_num) is pending:
                del self._pending[seq_num]
        if not pending.done.is_set():
            raise ClientTimeout(f"no {response_class.__name__} from msg_server {self.peer} within {timeout} s "
                                f"(seq_num={seq_num})")
        if pending.error is not None:
            raise pending.error
        return pending.response

    # ------------------------------------------------------------------
    # Receiving

    def _handle_pdu(self, pdu) -> None:
        if pdu.service_id == BD.SID_OTHER and pdu.command_id == BD.CID_OTHER_HEARTBEAT:
            self.heartbeats_received += 1
            return

        pending = self._pending.get(pdu.seq_num)
        if (pending is not None and pending.service_id == pdu.service_id
                and pending.command_id == pdu.command_id):
            del self._pending[pdu.seq_num]
            pending.resolve(pdu.body)
            return

        message_class = INCOMING_MESSAGES.get((pdu.service_id, pdu.command_id))
        message = None
        if message_class is None:
            logger.debug("unknown command 0x%04x (service_id=%d) from msg_server %s",
                         pdu.command_id, pdu.service_id, self.peer)
        else:
            message = message_class()
            try:
                message.ParseFromString(pdu.body)
            except DecodeError as exc:
                self.bad_bodies += 1
                logger.info("dropping command 0x%04x from msg_server %s: body is not a valid %s (%s)",
                            pdu.command_id, self.peer, message_class.__name__, exc)
                return

        if pdu.command_id == BD.CID_MSG_DATA and self.auto_ack:
            self._ack_delivery(message)
        elif pdu.command_id == BD.CID_LOGIN_KICK_USER:
            self.kick_reason = message.kick_reason
        self._post_event(Event(pdu.service_id, pdu.command_id, pdu.seq_num, message, pdu.body))

    def _ack_delivery(self, msg: IM_Message.IMMsgData) -> None:
        """Acknowledge a delivered IMMsgData with IMMsgDataAck, as the original clients do."""
        ack = IM_Message.IMMsgDataAck(
            user_id=self.user_id,
            session_id=self.session_of(msg),
            msg_id=msg.msg_id,
            session_type=session_type_of(msg.msg_type),
        )
        try:
            self._queue(encode_message(BD.SID_MSG, BD.CID_MSG_DATA_ACK, ack))
        except ConnectionClosed:
            return
        self.acks_sent += 1

    def _post_event(self, event: Event) -> None:
        try:
            self._events_send.send_nowait(event)
        except trio.WouldBlock:
            self.dropped_events += 1
            if self.dropped_events == 1 or self.dropped_events % 10000 == 0:
                logger.warning("event buffer of %d is full: dropped %d events from msg_server %s so far",
                               self._events_send.statistics().max_buffer_size, self.dropped_events, self.peer)
        except trio.ClosedResourceError:
            pass

    def session_of(self, msg: IM_Message.IMMsgData) -> int:
        """Return the session_id of a message as seen by this user.

        For a group message that is the group_id. For a single message it is
        the peer: the sender, or the recipient when this user sent it from
        another device.
        """
        if session_type_of(msg.msg_type) == BD.SESSION_TYPE_GROUP:
            return msg.to_session_id
        if msg.from_user_id == self.user_id:
            return msg.to_session_id
        return msg.from_user_id

    async def next_event(self, timeout: float | None = None) -> Event:
        """Return the next pushed event from the channel.

        Raises ClientTimeout after ``timeout`` seconds (``request_timeout`` by
        default) and ConnectionClosed when the connection is closed and every
        buffered event was taken.
        """
        timeout = self._timeout(timeout)
        with trio.move_on_after(timeout):
            try:
                return await self.events_receive.receive()
            except trio.EndOfChannel:
                raise ConnectionClosed(self.close_reason) from None
        raise ClientTimeout(f"no event from msg_server {self.peer} within {timeout} s")

    async def expect(self, command_id: int, timeout: float | None = None, *,
                     where: Callable[[Message], bool] | None = None) -> Message:
        """Return the message of the next event with ``command_id`` (and ``where(message)`` true).

        Events set aside earlier in ``other_events`` are searched first. Events
        that do not match are appended to ``other_events``. Raises ClientTimeout
        and ConnectionClosed like ``next_event``.
        """

        def matches(event: Event) -> bool:
            return event.command_id == command_id and (where is None or where(event.message))

        for index, event in enumerate(self.other_events):
            if matches(event):
                del self.other_events[index]
                return event.message

        timeout = self._timeout(timeout)
        with trio.move_on_after(timeout):
            while True:
                try:
                    event = await self.events_receive.receive()
                except trio.EndOfChannel:
                    raise ConnectionClosed(self.close_reason) from None
                if matches(event):
                    return event.message
                self.other_events.append(event)
        raise ClientTimeout(f"no command 0x{command_id:04x} from msg_server {self.peer} within {timeout} s")

    # ------------------------------------------------------------------
    # Login

    async def login(self, user_name: str, password: str | bytes, *, client_type: int = BD.CLIENT_TYPE_WINDOWS,
                    online_status: int = BD.USER_STATUS_ONLINE, client_version: str = DEFAULT_CLIENT_VERSION,
                    password_is_md5: bool = False, timeout: float | None = None) -> IM_Login.IMLoginRes:
        """Log in with IMLoginReq and return the IMLoginRes.

        The plain password is sent as its lowercase MD5 hex, like the original
        clients do. With ``password_is_md5`` it must already be those 32 hex
        digits. On success ``user_id``, ``user_info``, ``online_status`` and
        ``server_time`` are set. Raises LoginRefused for a non-zero
        result_code (the server then closes the connection), and ValueError
        for an empty user name or a malformed MD5 password.
        """
        if not user_name:
            raise ValueError("user_name is empty")
        if password_is_md5:
            if not isinstance(password, str) or not _MD5_HEX.fullmatch(password):
                raise ValueError("password_is_md5 needs the password as 32 lowercase hex digits")
            sent_password = password
        else:
            sent_password = md5_hex(password)

        request = IM_Login.IMLoginReq(
            user_name=user_name,
            password=sent_password,
            online_status=online_status,
            client_type=client_type,
            client_version=client_version,
        )
        response = await self.request(BD.SID_LOGIN, BD.CID_LOGIN_REQ_USERLOGIN, request,
                                      BD.CID_LOGIN_RES_USERLOGIN, timeout=timeout)
        if response.result_code != BD.REFUSE_REASON_NONE:
            raise LoginRefused(response.result_code, response.result_string)

        self.user_info = response.user_info
        self.user_id = response.user_info.user_id
        self.online_status = response.online_status
        self.server_time = response.server_time
        logger.info("logged in to msg_server %s as user_id=%d", self.peer, self.user_id)
        return response

    async def logout(self, timeout: float | None = None) -> IM_Login.IMLogoutRsp:
        """Send IMLogoutReq and return IMLogoutRsp; the server then closes the connection."""
        return await self.request(BD.SID_LOGIN, BD.CID_LOGIN_REQ_LOGINOUT, IM_Login.IMLogoutReq(),
                                  BD.CID_LOGIN_RES_LOGINOUT, timeout=timeout)

    # ------------------------------------------------------------------
    # Messages

    def build_msg_data(self, to_session_id: int, text: str | bytes, *,
                       session_type: int = BD.SESSION_TYPE_SINGLE) -> IM_Message.IMMsgData:
        """Build the IMMsgData of a text message from this user.

        ``text`` is encoded as UTF-8 when it is a str and sent as is when it is
        bytes. Raises ValueError for an empty text (msg_server drops those
        without a response), a bad session type or an id out of range.
        """
        _check_id("to_session_id", to_session_id)
        _check_session_type(session_type)
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        if not data:
            raise ValueError("message text is empty")
        if session_type == BD.SESSION_TYPE_GROUP:
            msg_type = BD.MSG_TYPE_GROUP_TEXT
        else:
            msg_type = BD.MSG_TYPE_SINGLE_TEXT
        return IM_Message.IMMsgData(
            from_user_id=self.user_id,
            to_session_id=to_session_id,
            msg_id=0,
            create_time=int(time.time()),
            msg_type=msg_type,
            msg_data=data,
        )

    async def send_text(self, to_session_id: int, text: str | bytes, *, session_type: int = BD.SESSION_TYPE_SINGLE,
                        timeout: float | None = None) -> IM_Message.IMMsgDataAck:
        """Send a text message and return its IMMsgDataAck, which carries the stored msg_id."""
        msg = self.build_msg_data(to_session_id, text, session_type=session_type)
        return await self.request(BD.SID_MSG, BD.CID_MSG_DATA, msg, BD.CID_MSG_DATA_ACK, timeout=timeout)

    async def send_text_nowait(self, to_session_id: int, text: str | bytes, *,
                               session_type: int = BD.SESSION_TYPE_SINGLE) -> int:
        """Send a text message without waiting for its ack, and return its seq_num.

        The IMMsgDataAck then arrives as an event with that seq_num. Waits
        only while the outgoing buffer is over ``max_send_buffer``.
        """
        msg = self.build_msg_data(to_session_id, text, session_type=session_type)
        seq_num = self._next_seq_num()
        await self._send(encode_message(BD.SID_MSG, BD.CID_MSG_DATA, msg, seq_num))
        return seq_num

    async def read_ack(self, session_id: int, msg_id: int, session_type: int = BD.SESSION_TYPE_SINGLE) -> None:
        """Send IMMsgDataReadAck: messages of the session up to ``msg_id`` are read (no response)."""
        _check_id("session_id", session_id)
        _check_session_type(session_type)
        ack = IM_Message.IMMsgDataReadAck(user_id=self.user_id, session_id=session_id, msg_id=msg_id,
                                          session_type=session_type)
        await self.send_message(BD.SID_MSG, BD.CID_MSG_READ_ACK, ack)

    async def unread_counts(self, timeout: float | None = None) -> IM_Message.IMUnreadMsgCntRsp:
        """Return IMUnreadMsgCntRsp: the total and one UnreadInfo per session with unread messages."""
        request = IM_Message.IMUnreadMsgCntReq(user_id=self.user_id)
        return await self.request(BD.SID_MSG, BD.CID_MSG_UNREAD_CNT_REQUEST, request,
                                  BD.CID_MSG_UNREAD_CNT_RESPONSE, timeout=timeout)

    async def message_list(self, session_id: int, session_type: int = BD.SESSION_TYPE_SINGLE,
                           msg_id_begin: int = 0, count: int = 20,
                           timeout: float | None = None) -> IM_Message.IMGetMsgListRsp:
        """Return IMGetMsgListRsp with up to ``count`` messages from ``msg_id_begin`` downwards.

        ``msg_id_begin=0`` requests the latest messages. The original servers
        return them newest first.
        """
        _check_id("session_id", session_id)
        _check_session_type(session_type)
        if count < 1:
            raise ValueError(f"count must be at least 1, not {count}")
        request = IM_Message.IMGetMsgListReq(user_id=self.user_id, session_type=session_type, session_id=session_id,
                                             msg_id_begin=msg_id_begin, msg_cnt=count)
        return await self.request(BD.SID_MSG, BD.CID_MSG_LIST_REQUEST, request, BD.CID_MSG_LIST_RESPONSE,
                                  timeout=timeout)

    async def messages_by_id(self, session_id: int, session_type: int, msg_ids,
                             timeout: float | None = None) -> IM_Message.IMGetMsgByIdRsp:
        """Return IMGetMsgByIdRsp with the listed messages of one session."""
        _check_id("session_id", session_id)
        _check_session_type(session_type)
        request = IM_Message.IMGetMsgByIdReq(user_id=self.user_id, session_type=session_type, session_id=session_id,
                                             msg_id_list=list(msg_ids))
        return await self.request(BD.SID_MSG, BD.CID_MSG_GET_BY_MSG_ID_REQ, request, BD.CID_MSG_GET_BY_MSG_ID_RES,
                                  timeout=timeout)

    async def latest_msg_id(self, session_id: int, session_type: int = BD.SESSION_TYPE_SINGLE,
                            timeout: float | None = None) -> int:
        """Return the latest msg_id of a session (0 when it has no messages)."""
        _check_id("session_id", session_id)
        _check_session_type(session_type)
        request = IM_Message.IMGetLatestMsgIdReq(user_id=self.user_id, session_type=session_type,
                                                 session_id=session_id)
        response = await self.request(BD.SID_MSG, BD.CID_MSG_GET_LATEST_MSG_ID_REQ, request,
                                      BD.CID_MSG_GET_LATEST_MSG_ID_RSP, timeout=timeout)
        return response.latest_msg_id

    async def client_time(self, timeout: float | None = None) -> int:
        """Return the server's clock (IMClientTimeRsp.server_time, Unix seconds)."""
        response = await self.request(BD.SID_MSG, BD.CID_MSG_TIME_REQUEST, IM_Message.IMClientTimeReq(),
                                      BD.CID_MSG_TIME_RESPONSE, timeout=timeout)
        return response.server_time

    # ------------------------------------------------------------------
    # Buddy list and sessions

    async def recent_sessions(self, since: int = 0,
                              timeout: float | None = None) -> IM_Buddy.IMRecentContactSessionRsp:
        """Return IMRecentContactSessionRsp: the sessions updated after ``since`` (Unix seconds)."""
        request = IM_Buddy.IMRecentContactSessionReq(user_id=self.user_id, latest_update_time=since)
        return await self.request(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_RECENT_CONTACT_SESSION_REQUEST, request,
                                  BD.CID_BUDDY_LIST_RECENT_CONTACT_SESSION_RESPONSE, timeout=timeout)

    async def users_info(self, user_ids, timeout: float | None = None) -> IM_Buddy.IMUsersInfoRsp:
        """Return IMUsersInfoRsp with the UserInfo of the listed users that exist."""
        request = IM_Buddy.IMUsersInfoReq(user_id=self.user_id, user_id_list=list(user_ids))
        return await self.request(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_USER_INFO_REQUEST, request,
                                  BD.CID_BUDDY_LIST_USER_INFO_RESPONSE, timeout=timeout)

    async def all_users(self, since: int = 0, timeout: float | None = None) -> IM_Buddy.IMAllUserRsp:
        """Return IMAllUserRsp: every user changed after ``since`` (Unix seconds)."""
        request = IM_Buddy.IMAllUserReq(user_id=self.user_id, latest_update_time=since)
        return await self.request(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_ALL_USER_REQUEST, request,
                                  BD.CID_BUDDY_LIST_ALL_USER_RESPONSE, timeout=timeout)

    async def users_status(self, user_ids, timeout: float | None = None) -> IM_Buddy.IMUsersStatRsp:
        """Return IMUsersStatRsp: the online status of the listed users."""
        request = IM_Buddy.IMUsersStatReq(user_id=self.user_id, user_id_list=list(user_ids))
        return await self.request(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_USERS_STATUS_REQUEST, request,
                                  BD.CID_BUDDY_LIST_USERS_STATUS_RESPONSE, timeout=timeout)

    # ------------------------------------------------------------------
    # Groups

    async def normal_groups(self, timeout: float | None = None) -> IM_Group.IMNormalGroupListRsp:
        """Return IMNormalGroupListRsp: the ids and versions of the user's groups."""
        request = IM_Group.IMNormalGroupListReq(user_id=self.user_id)
        return await self.request(BD.SID_GROUP, BD.CID_GROUP_NORMAL_LIST_REQUEST, request,
                                  BD.CID_GROUP_NORMAL_LIST_RESPONSE, timeout=timeout)

    async def groups_info(self, group_ids, timeout: float | None = None) -> IM_Group.IMGroupInfoListRsp:
        """Return IMGroupInfoListRsp with the GroupInfo of the listed groups (asked with version 0)."""
        versions = [BD.GroupVersionInfo(group_id=group_id, version=0) for group_id in group_ids]
        request = IM_Group.IMGroupInfoListReq(user_id=self.user_id, group_version_list=versions)
        return await self.request(BD.SID_GROUP, BD.CID_GROUP_INFO_REQUEST, request, BD.CID_GROUP_INFO_RESPONSE,
                                  timeout=timeout)

    async def create_group(self, group_name: str, member_ids, *, group_type: int = BD.GROUP_TYPE_TMP,
                           group_avatar: str = "", timeout: float | None = None) -> IM_Group.IMGroupCreateRsp:
        """Create a group with IMGroupCreateReq and return IMGroupCreateRsp."""
        request = IM_Group.IMGroupCreateReq(user_id=self.user_id, group_type=group_type, group_name=group_name,
                                            group_avatar=group_avatar, member_id_list=list(member_ids))
        return await self.request(BD.SID_GROUP, BD.CID_GROUP_CREATE_REQUEST, request, BD.CID_GROUP_CREATE_RESPONSE,
                                  timeout=timeout)

    async def change_group_members(self, group_id: int, change_type: int, member_ids,
                                   timeout: float | None = None) -> IM_Group.IMGroupChangeMemberRsp:
        """Add (GROUP_MODIFY_TYPE_ADD) or remove (GROUP_MODIFY_TYPE_DEL) members; return the response."""
        _check_id("group_id", group_id)
        request = IM_Group.IMGroupChangeMemberReq(user_id=self.user_id, change_type=change_type, group_id=group_id,
                                                  member_id_list=list(member_ids))
        return await self.request(BD.SID_GROUP, BD.CID_GROUP_CHANGE_MEMBER_REQUEST, request,
                                  BD.CID_GROUP_CHANGE_MEMBER_RESPONSE, timeout=timeout)


def session_type_of(msg_type: int) -> int:
    """Return the SessionType of a MsgType: group types are 0x1X, single types 0x0X."""
    if msg_type & 0xF0 == 0x10:
        return BD.SESSION_TYPE_GROUP
    return BD.SESSION_TYPE_SINGLE


# ----------------------------------------------------------------------
# Finding a msg_server through login_server


async def fetch_msg_server(login_host: str, login_http_port: int, *,
                           timeout: float = DEFAULT_REQUEST_TIMEOUT) -> dict:
    """Ask login_server's HTTP port for a msg_server with ``GET /msg_server``.

    Returns the JSON object as sent: ``code`` (0), ``msg``, ``priorIP``,
    ``backupIP``, ``port`` (a string), ``msfsPrior``, ``msfsBackup`` and
    ``discovery``. Raises MsgServerUnavailable for a non-zero code, ClientError
    for an HTTP status other than 200 or a body that is not the expected JSON,
    and ClientTimeout when the whole exchange takes more than ``timeout`` seconds.
    """
    where = f"login_server {login_host}:{login_http_port}"
    request = (f"GET /msg_server HTTP/1.1\r\nHost: {login_host}:{login_http_port}\r\n"
               f"Accept: application/json\r\nConnection: close\r\n\r\n").encode("ascii")
    stream = await _open_stream(login_host, login_http_port, timeout, "login_server")
    try:
        with trio.fail_after(timeout):
            await stream.send_all(request)
            raw = await _read_http_response(stream, where)
    except trio.TooSlowError:
        raise ClientTimeout(f"{where} timed out: no /msg_server response within {timeout} s") from None
    except trio.BrokenResourceError as exc:
        raise ClientError(f"connection to {where} failed: {exc}") from exc
    finally:
        await trio.aclose_forcefully(stream)

    status, headers, body = _parse_http_response(raw, where)
    if status != 200:
        raise ClientError(f"{where} returned HTTP status {status} for /msg_server")
    return _parse_msg_server_json(body, where)


async def _read_http_response(stream: trio.abc.ReceiveStream, where: str) -> bytes:
    """Read an HTTP response until EOF, or until the Content-Length body is complete."""
    raw = bytearray()
    expected_total = None
    while expected_total is None or len(raw) < expected_total:
        data = await stream.receive_some(RECEIVE_SIZE)
        if not data:
            break
        raw += data
        if len(raw) > MAX_HTTP_RESPONSE:
            raise ClientError(f"{where} sent more than {MAX_HTTP_RESPONSE} bytes for /msg_server")
        if expected_total is None:
            expected_total = _expected_http_length(raw)
    return bytes(raw)


def _expected_http_length(raw: bytes) -> int | None:
    """Return header plus Content-Length bytes once the header is complete, else None."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return None
    match = re.search(rb"(?im)^content-length:[ \t]*(\d+)[ \t]*\r?$", raw[:end + 2])
    if match is None:
        return None
    return end + 4 + int(match.group(1))


def _parse_http_response(raw: bytes, where: str) -> tuple[int, dict[str, str], bytes]:
    """Split an HTTP/1.x response into status code, headers (lowercase names) and body."""
    head, separator, body = raw.partition(b"\r\n\r\n")
    if not separator:
        raise ClientError(f"{where} sent an incomplete HTTP response ({len(raw)} bytes, no end of header)")
    lines = head.decode("iso-8859-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ClientError(f"{where} sent an invalid HTTP status line: {lines[0][:80]!r}")
    status = int(parts[1])

    headers = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()

    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _decode_chunked(body, where)
    elif "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise ClientError(f"{where} sent an invalid Content-Length: {headers['content-length']!r}") from None
        if len(body) < length:
            raise ClientError(f"{where} closed the connection after {len(body)} of {length} body bytes")
        body = body[:length]
    return status, headers, body


def _decode_chunked(body: bytes, where: str) -> bytes:
    decoded = bytearray()
    position = 0
    while True:
        line_end = body.find(b"\r\n", position)
        if line_end < 0:
            raise ClientError(f"{where} sent a truncated chunked body")
        size_text = body[position:line_end].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ClientError(f"{where} sent an invalid chunk size {size_text[:20]!r}") from None
        if size == 0:
            return bytes(decoded)
        start = line_end + 2
        if start + size > len(body):
            raise ClientError(f"{where} sent a truncated chunked body")
        decoded += body[start:start + size]
        position = start + size + 2


def _parse_msg_server_json(body: bytes, where: str) -> dict:
    try:
        info = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ClientError(f"{where} sent a /msg_server body that is not JSON: {body[:80]!r}") from None
    if not isinstance(info, dict):
        raise ClientError(f"{where} sent JSON that is not an object: {type(info).__name__}")

    code = info.get("code")
    if isinstance(code, bool) or not isinstance(code, int):
        raise ClientError(f"{where} sent /msg_server JSON without an integer code: {code!r}")
    if code != 0:
        raise MsgServerUnavailable(code, str(info.get("msg", "")))

    if not isinstance(info.get("priorIP"), str) or not info["priorIP"]:
        raise ClientError(f"{where} sent /msg_server JSON without priorIP")
    port = str(info.get("port", ""))
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ClientError(f"{where} sent /msg_server JSON with an invalid port: {info.get('port')!r}")
    return info


async def fetch_msg_server_tcp(login_host: str, login_tcp_port: int, *, timeout: float = DEFAULT_REQUEST_TIMEOUT,
                               max_pdu_length: int = DEFAULT_MAX_PDU_LENGTH) -> IM_Login.IMMsgServRsp:
    """Ask login_server's PDU port for a msg_server with IMMsgServReq; return the IMMsgServRsp.

    Raises MsgServerUnavailable for a non-zero result_code, ClientError when
    the connection fails or closes first, and ClientTimeout after ``timeout`` seconds.
    """
    where = f"login_server {login_host}:{login_tcp_port}"
    stream = await _open_stream(login_host, login_tcp_port, timeout, "login_server")
    try:
        with trio.fail_after(timeout):
            await stream.send_all(encode_message(BD.SID_LOGIN, BD.CID_LOGIN_REQ_MSGSERVER,
                                                 IM_Login.IMMsgServReq(), seq_num=1))
            body = await _receive_command(stream, PduReader(max_pdu_length), BD.CID_LOGIN_RES_MSGSERVER, where)
    except trio.TooSlowError:
        raise ClientTimeout(f"{where} timed out: no IMMsgServRsp within {timeout} s") from None
    except trio.BrokenResourceError as exc:
        raise ClientError(f"connection to {where} failed: {exc}") from exc
    except ProtocolError as exc:
        raise ClientError(f"{where} sent bad framing: {exc}") from exc
    finally:
        await trio.aclose_forcefully(stream)

    response = IM_Login.IMMsgServRsp()
    try:
        response.ParseFromString(body)
    except DecodeError as exc:
        raise ClientError(f"{where} sent an IMMsgServRsp that does not parse: {exc}") from None
    if response.result_code != BD.REFUSE_REASON_NONE:
        raise MsgServerUnavailable(response.result_code, _enum_name(BD.ResultType, response.result_code))
    return response


async def _receive_command(stream: trio.abc.ReceiveStream, reader: PduReader, command_id: int, where: str) -> bytes:
    """Read PDUs until one has ``command_id``, and return its body."""
    while True:
        for pdu in reader:
            if pdu.command_id == command_id:
                return pdu.body
        data = await stream.receive_some(RECEIVE_SIZE)
        if not data:
            raise ClientError(f"{where} closed the connection before sending a response")
        reader.feed(data)


@asynccontextmanager
async def open_client(login_host: str, http_port: int, user_name: str, password: str | bytes, *,
                      client_options: dict | None = None, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                      **login_options: Any) -> AsyncIterator[Client]:
    """Find a msg_server through login_server, connect, log in and yield the Client.

    Tries ``priorIP`` and then ``backupIP``. ``client_options`` go to
    ``Client``, and ``login_options`` to ``Client.login``. Raises what
    ``fetch_msg_server``, ``Client.connect`` and ``Client.login`` raise.
    """
    info = await fetch_msg_server(login_host, http_port, timeout=connect_timeout)
    port = int(info["port"])
    hosts = [info["priorIP"]]
    backup = info.get("backupIP")
    if isinstance(backup, str) and backup and backup != info["priorIP"]:
        hosts.append(backup)

    stream = None
    for host in hosts:
        try:
            stream = await _open_stream(host, port, connect_timeout, "msg_server")
        except ClientError as exc:
            logger.warning("msg_server %s:%d is unreachable: %s", host, port, exc)
            if host == hosts[-1]:
                raise
            continue
        break

    client = Client(host, port, **(client_options or {}))
    async with client._running(stream):
        await client.login(user_name, password, **login_options)
        yield client
