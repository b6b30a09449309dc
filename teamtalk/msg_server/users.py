"""Per-connection and per-user state of msg_server.

A user (``OnlineUser``) may be logged in from several devices at once: one
``ClientState`` per connection.  PC clients (Windows, Mac) and mobile
clients (iOS, Android) form two client classes; a new login kicks older
connections of the same user and the same class.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import trio

from teamtalk.net.connection import Connection
from teamtalk.net.link import ServerLink
from teamtalk.pb import IM_BaseDefine as BD
from teamtalk.protocol import PC_CLIENT_TYPES



def is_pc(client_type: int) -> bool:
    return client_type in PC_CLIENT_TYPES


def same_client_class(a: int, b: int) -> bool:
    """True if both client types are PC or both are mobile."""
    return is_pc(a) == is_pc(b)


@dataclass(slots=True)
class ClientState:
    """State of one client connection on msg_server."""

    user_id: int = 0
    user_name: str = ""
    client_type: int = 0
    online_status: int = BD.USER_STATUS_ONLINE
    logged_in: bool = False
    login_pending: bool = False
    # While login_pending: the db_proxy link that carries the IMValidateReq and
    # the IMLoginReq's seq_num, so the login can be rejected if that link drops.
    validate_link: ServerLink | None = None
    login_seq_num: int = 0
    # Rate limit window for IMMsgData: start time (trio clock) and count.
    rate_window_start: float = -math.inf
    rate_window_count: int = 0
    # Deliveries not yet acknowledged: (peer session id, msg_id) -> sent time.
    pending: dict = field(default_factory=dict)


class OnlineUser:
    """A user with at least one logged-in connection on this msg_server."""

    __slots__ = ("user_id", "connections")

    def __init__(self, user_id: int) -> None:
        self.user_id = user_id
        self.connections: list[Connection] = []

    def connections_of_class(self, client_type: int) -> list[Connection]:
        return [c for c in self.connections if same_client_class(c.state.client_type, client_type)]



class PendingAcks:
    """Deliveries waiting for the device's ``IMMsgDataAck``.

    Each connection keeps its own dict; this queue orders them by time so one
    sweep finds those older than the timeout without scanning every
    connection.  An expired delivery counts as a miss: the message stays
    unread in storage, so the client fetches it when it reconnects.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.queue: deque[tuple[float, Connection, tuple[int, int]]] = deque()
        self.miss_count = 0

    def add(self, connection: Connection, peer_id: int, msg_id: int) -> None:
        now = trio.current_time()
        key = (peer_id, msg_id)
        connection.state.pending[key] = now
        self.queue.append((now, connection, key))

    def sweep(self) -> int:
        """Drop expired deliveries; return how many were missed in this sweep."""
        limit = trio.current_time() - self.timeout
        missed = 0
        queue = self.queue
        while queue and queue[0][0] <= limit:
            sent, connection, key = queue.popleft()
            if connection.closed:
                continue
            if connection.state.pending.get(key) == sent:
                del connection.state.pending[key]
                missed += 1
        self.miss_count += missed
        return missed
