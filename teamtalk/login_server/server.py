"""login_server: chooses the msg_server each client should use.

Three listeners: msg_servers register on one (``IMMsgServInfo``, then
``IMUserCntUpdate`` on every login and logout); clients ask over HTTP
(``GET /msg_server``, JSON) or over PDUs (``IMMsgServReq``).  The answer is
the registered msg_server with the fewest connections that is not full.
A msg_server that disconnects leaves the registry at once.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import trio

from teamtalk.net.connection import SERVER_LINK_QUEUE_LENGTH, Connection, peer_name
from teamtalk.net.server import PduServer, open_listeners
from teamtalk.pb import IM_BaseDefine as BD
from teamtalk.pb import IM_Login, IM_Other, IM_Server
from teamtalk.pdu import Pdu
from teamtalk.protocol import HEARTBEAT_PDU, Dispatcher, encode_message

logger = logging.getLogger(__name__)

HTTP_MAX_REQUEST = 8192
HTTP_TIMEOUT = 10.0

# The `msg` texts are shown to end users by the original clients.
MSG_NO_SERVER = "没有可用的消息服务器"
MSG_ALL_FULL = "消息服务器负载过高，请稍后再试"

USER_ACTION_ADD = 1
USER_ACTION_DEL = 2


@dataclass
class MsgServerEntry:
    ip1: str
    ip2: str
    port: int
    max_conn_cnt: int
    cur_conn_cnt: int
    host_name: str


class MsgServerRegistry:
    """Registered msg_servers, keyed by their link to this login_server."""

    def __init__(self) -> None:
        self.entries: dict[Connection, MsgServerEntry] = {}

    def pick(self) -> tuple[int, MsgServerEntry | None]:
        """Return (code, entry): 0 with the least-loaded server, 1 none, 2 all full."""
        if not self.entries:
            return 1, None
        candidates = [e for e in self.entries.values() if e.cur_conn_cnt < e.max_conn_cnt]
        if not candidates:
            return 2, None
        return 0, min(candidates, key=lambda entry: entry.cur_conn_cnt)

    @property
    def total_users(self) -> int:
        return sum(entry.cur_conn_cnt for entry in self.entries.values())


class LoginServer:
    """The login_server role."""

    name = "login_server"

    def __init__(self, *, client_host: str = "0.0.0.0", client_port: int = 8008,
                 http_host: str = "0.0.0.0", http_port: int = 8080,
                 msg_server_host: str = "0.0.0.0", msg_server_port: int = 8100,
                 msfs_url: str = "", discovery_url: str = "",
                 max_pdu_length: int = 1 << 20, heartbeat_interval: float = 5.0,
                 server_timeout: float = 30.0) -> None:
        self.http_host = http_host
        self.http_port = http_port
        self.msfs_url = msfs_url
        self.discovery_url = discovery_url
        self.heartbeat_interval = heartbeat_interval
        self.server_timeout = server_timeout
        self.registry = MsgServerRegistry()
        self.msg_server_listener = PduServer("login_server msg_server port", msg_server_host, msg_server_port,
                                             _MsgServerSide(self), max_pdu_length=max_pdu_length,
                                             send_queue_length=SERVER_LINK_QUEUE_LENGTH)
        self.client_listener = PduServer("login_server client port", client_host, client_port,
                                         _ClientSide(self), max_pdu_length=4096)
        self._http_scope: trio.CancelScope | None = None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.msg_server_listener.run)
            await nursery.start(self.client_listener.run)
            self.http_port = await nursery.start(self._serve_http)
            nursery.start_soon(self._send_heartbeats)
            task_status.started()

    def stop_accepting(self) -> None:
        self.client_listener.stop_accepting()
        self.msg_server_listener.stop_accepting()
        if self._http_scope is not None:
            self._http_scope.cancel()

    async def drain(self) -> None:
        """Return at once, because every response is computed in memory."""

    # The response, shared by HTTP and PDU clients

    def msg_server_answer(self) -> dict:
        code, entry = self.registry.pick()
        if entry is None:
            return {"code": code, "msg": MSG_NO_SERVER if code == 1 else MSG_ALL_FULL}
        return {
            "code": 0,
            "msg": "",
            "priorIP": entry.ip1,
            "backupIP": entry.ip2,
            "port": str(entry.port),
            "msfsPrior": self.msfs_url,
            "msfsBackup": self.msfs_url,
            "discovery": self.discovery_url,
        }

    # HTTP

    async def _serve_http(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as self._http_scope:
            listeners = await open_listeners("login_server HTTP", self.http_host, self.http_port)
            port = listeners[0].socket.getsockname()[1]
            hosts = self.http_host if isinstance(self.http_host, str) else ",".join(self.http_host)
            logger.info("login_server HTTP listening on %s:%d", hosts, port)
            task_status.started(port)
            await trio.serve_listeners(self._handle_http, listeners)

    async def _handle_http(self, stream: trio.SocketStream) -> None:
        peer = peer_name(stream)
        try:
            with trio.move_on_after(HTTP_TIMEOUT):
                request = await _read_http_request(stream)
                if request is None:
                    logger.info("HTTP request from %s is malformed or too large", peer)
                    await _send_http(stream, 400, {"code": 400, "msg": "bad request"})
                    await _discard_input(stream)
                    return
                method, path = request
                if method != "GET" or path.split("?", 1)[0] != "/msg_server":
                    await _send_http(stream, 404, {"code": 404, "msg": "not found"})
                    return
                answer = self.msg_server_answer()
                logger.debug("HTTP /msg_server from %s -> code %d", peer, answer["code"])
                await _send_http(stream, 200, answer)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            logger.debug("HTTP client %s left: %s", peer, exc)
        finally:
            await trio.aclose_forcefully(stream)

    async def _send_heartbeats(self) -> None:
        while True:
            await trio.sleep(self.heartbeat_interval)
            for connection in list(self.registry.entries):
                connection.send(HEARTBEAT_PDU)


class _MsgServerSide:
    """Connections from msg_servers: registration and user counts."""

    def __init__(self, login: LoginServer) -> None:
        self.login = login
        self.dispatcher = Dispatcher("login_server")
        self.dispatcher.add(BD.SID_OTHER, BD.CID_OTHER_HEARTBEAT, IM_Other.IMHeartBeat, self._on_heartbeat)
        self.dispatcher.add(BD.SID_OTHER, BD.CID_OTHER_MSG_SERV_INFO, IM_Server.IMMsgServInfo, self._on_info)
        self.dispatcher.add(BD.SID_OTHER, BD.CID_OTHER_USER_CNT_UPDATE, IM_Server.IMUserCntUpdate,
                            self._on_user_count)

    def connection_made(self, connection: Connection) -> None:
        connection.idle_timeout = self.login.server_timeout

    async def pdu_received(self, connection: Connection, pdu: Pdu) -> None:
        await self.dispatcher.dispatch(connection, pdu)

    def connection_lost(self, connection: Connection) -> None:
        entry = self.login.registry.entries.pop(connection, None)
        if entry is not None:
            logger.info("msg_server %s (%s:%d) left the registry: %s",
                        entry.host_name, entry.ip1, entry.port, connection.close_reason)

    async def _on_heartbeat(self, connection, pdu, message) -> None:
        """Receiving is what keeps the link alive."""

    async def _on_info(self, connection, pdu, message) -> None:
        entry = MsgServerEntry(message.ip1, message.ip2, message.port, message.max_conn_cnt,
                               message.cur_conn_cnt, message.host_name)
        self.login.registry.entries[connection] = entry
        logger.info("msg_server %s registered: %s/%s port %d, %d/%d connections",
                    entry.host_name, entry.ip1, entry.ip2, entry.port, entry.cur_conn_cnt, entry.max_conn_cnt)

    async def _on_user_count(self, connection, pdu, message) -> None:
        entry = self.login.registry.entries.get(connection)
        if entry is None:
            logger.info("user count update from unregistered msg_server %s ignored", connection.peer)
            return
        if message.user_action == USER_ACTION_ADD:
            entry.cur_conn_cnt += 1
        elif message.user_action == USER_ACTION_DEL:
            entry.cur_conn_cnt = max(0, entry.cur_conn_cnt - 1)
        else:
            logger.info("unknown user_action %d from %s ignored", message.user_action, connection.peer)


class _ClientSide:
    """Clients asking over PDUs which msg_server to use (the original's TCP port never responds)."""

    def __init__(self, login: LoginServer) -> None:
        self.login = login
        self.dispatcher = Dispatcher("login_server clients")
        self.dispatcher.add(BD.SID_LOGIN, BD.CID_LOGIN_REQ_MSGSERVER, IM_Login.IMMsgServReq, self._on_request)
        self.dispatcher.add(BD.SID_OTHER, BD.CID_OTHER_HEARTBEAT, IM_Other.IMHeartBeat, self._on_heartbeat)

    def connection_made(self, connection: Connection) -> None:
        connection.idle_timeout = HTTP_TIMEOUT

    async def pdu_received(self, connection: Connection, pdu: Pdu) -> None:
        await self.dispatcher.dispatch(connection, pdu)

    def connection_lost(self, connection: Connection) -> None:
        pass

    async def _on_heartbeat(self, connection, pdu, message) -> None:
        pass

    async def _on_request(self, connection, pdu, message) -> None:
        code, entry = self.login.registry.pick()
        response = IM_Login.IMMsgServRsp(result_code=code)
        if entry is not None:
            response.prior_ip = entry.ip1
            response.backip_ip = entry.ip2
            response.port = entry.port
        connection.send(encode_message(BD.SID_LOGIN, BD.CID_LOGIN_RES_MSGSERVER, response, pdu.seq_num))
        connection.close_after_flush("answered")


async def _read_http_request(stream: trio.SocketStream) -> tuple[str, str] | None:
    """Read one request head; return (method, path), or None if malformed or too large."""
    data = bytearray()
    while b"\r\n\r\n" not in data:
        if len(data) > HTTP_MAX_REQUEST:
            return None
        chunk = await stream.receive_some(4096)
        if not chunk:
            return None
        data += chunk
    request_line = bytes(data).split(b"\r\n", 1)[0].decode("latin-1")
    parts = request_line.split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return None
    return parts[0], parts[1]


async def _send_http(stream: trio.SocketStream, status: int, body: dict) -> None:
    reasons = {200: "OK", 400: "Bad Request", 404: "Not Found"}
    payload = json.dumps(body, ensure_ascii=False).encode()
    head = (f"HTTP/1.1 {status} {reasons[status]}\r\n"
            "Content-Type: text/html;charset=utf-8\r\n"
            f"Content-Length: {len(payload)}\r\n"
            "Connection: close\r\n\r\n").encode()
    await stream.send_all(head + payload)


async def _discard_input(stream: trio.SocketStream) -> None:
    """Close our side and read what the client still sends, so closing does not reset
    the connection before the client has read the response."""
    await stream.send_eof()
    with trio.move_on_after(1.0):
        while await stream.receive_some(65536):
            pass
