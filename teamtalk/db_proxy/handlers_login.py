"""Login validation: ``IMValidateReq`` from msg_server, ``IMValidateRsp`` in response.

result_code 0 carries the user's ``UserInfo``. A wrong name or password,
or a user who may not log in (status not 0), gets result_code 1. After
``MAX_FAILED_LOGINS`` failures of one name within ``FAILED_LOGIN_WINDOW``
seconds, that name gets result_code 6 without a password check until the
window has passed, which slows down password guessing.
"""

from __future__ import annotations

import logging
from collections import deque

import trio

from teamtalk.db_proxy.handlers_common import Spawn, send_response
from teamtalk.net.connection import Connection
from teamtalk.pb import IM_BaseDefine as BD
from teamtalk.pb import IM_Server
from teamtalk.pdu import Pdu
from teamtalk.protocol import Dispatcher
from teamtalk.storage import Storage
from teamtalk.storage.users import user_info_fields, validate_users

logger = logging.getLogger(__name__)

RESULT_OK = 0
RESULT_BAD_CREDENTIALS = 1
RESULT_SERVER_ERROR = 2
RESULT_TOO_MANY_FAILURES = 6

TEXT_OK = "成功"
TEXT_BAD_CREDENTIALS = "用户名或密码错误"
TEXT_SERVER_ERROR = "服务器内部错误"
TEXT_TOO_MANY_FAILURES = "用户名或密码错误次数太多，请稍后再试"

#: Failed logins of one name, within FAILED_LOGIN_WINDOW, after which it is locked.
MAX_FAILED_LOGINS = 10
#: Seconds a failed login counts against its name.
FAILED_LOGIN_WINDOW = 30 * 60.0
#: Names with recent failures kept in memory; beyond this the oldest are dropped.
MAX_TRACKED_NAMES = 100_000


class FailedLoginTracker:
    """Recent failed login times per user name, in Trio clock seconds."""

    def __init__(self, limit: int = MAX_FAILED_LOGINS, window: float = FAILED_LOGIN_WINDOW) -> None:
        self.limit = limit
        self.window = window
        self._failures: dict[str, deque[float]] = {}

    def is_locked(self, name: str) -> bool:
        times = self._recent(name)
        return times is not None and len(times) >= self.limit

    def record_failure(self, name: str) -> None:
        times = self._recent(name)
        if times is None:
            if len(self._failures) >= MAX_TRACKED_NAMES:
                # Dicts keep insertion order, so this drops the name tracked longest.
                del self._failures[next(iter(self._failures))]
            times = self._failures[name] = deque(maxlen=self.limit)
        times.append(trio.current_time())

    def clear(self, name: str) -> None:
        self._failures.pop(name, None)

    def _recent(self, name: str) -> deque[float] | None:
        times = self._failures.get(name)
        if times is None:
            return None
        oldest_kept = trio.current_time() - self.window
        while times and times[0] <= oldest_kept:
            times.popleft()
        if not times:
            del self._failures[name]
            return None
        return times


#: Logins checked with one query at most.
MAX_VALIDATE_BATCH = 500


class LoginHandlers:
    """Handler of ``CID_OTHER_VALIDATE_REQ``, checked against the users table.

    Requests are checked in batches: the first request of an idle server
    is checked at once, and those that arrive meanwhile are checked together
    by the next query, so a login storm costs one query per batch.
    """

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.failures = FailedLoginTracker()
        self._queue: list[tuple[Connection, Pdu, IM_Server.IMValidateReq]] = []
        self._checking = False

    def register(self, dispatcher: Dispatcher, spawn: Spawn) -> None:
        dispatcher.add(BD.SID_OTHER, BD.CID_OTHER_VALIDATE_REQ, IM_Server.IMValidateReq,
                       spawn(self.validate))

    async def validate(self, connection: Connection, pdu: Pdu, request: IM_Server.IMValidateReq) -> None:
        name = request.user_name
        if self.failures.is_locked(name):
            logger.info("validate %r: locked after %d failed logins", name, self.failures.limit)
            self._respond(connection, pdu, request, RESULT_TOO_MANY_FAILURES, TEXT_TOO_MANY_FAILURES)
            return
        self._queue.append((connection, pdu, request))
        if self._checking:
            return  # the task checking the current batch takes this one next
        self._checking = True
        try:
            while self._queue:
                batch = self._queue[:MAX_VALIDATE_BATCH]
                del self._queue[:MAX_VALIDATE_BATCH]
                await self._check_batch(batch)
        finally:
            self._checking = False

    async def _check_batch(self, batch: list[tuple[Connection, Pdu, IM_Server.IMValidateReq]]) -> None:
        try:
            users = await validate_users(self.storage.slave, [(r.user_name, r.password) for _, _, r in batch])
        except Exception:
            logger.exception("validate: lookup of %d users failed", len(batch))
            for connection, pdu, request in batch:
                self._respond(connection, pdu, request, RESULT_SERVER_ERROR, TEXT_SERVER_ERROR)
            return

        for (connection, pdu, request), user in zip(batch, users):
            name = request.user_name
            if user is None:
                self.failures.record_failure(name)
                logger.info("validate %r: wrong name or password, or user disabled", name)
                self._respond(connection, pdu, request, RESULT_BAD_CREDENTIALS, TEXT_BAD_CREDENTIALS)
            else:
                self.failures.clear(name)
                logger.debug("validate %r: user %d", name, user.id)
                self._respond(connection, pdu, request, RESULT_OK, TEXT_OK, user)

    def _respond(self, connection: Connection, pdu: Pdu, request: IM_Server.IMValidateReq,
                 result_code: int, text: str, user=None) -> None:
        response = IM_Server.IMValidateRsp(user_name=request.user_name, attach_data=request.attach_data,
                                           result_code=result_code, result_string=text)
        if user is not None:
            response.user_info.CopyFrom(BD.UserInfo(**user_info_fields(user)))
        send_response(connection, pdu, BD.SID_OTHER, BD.CID_OTHER_VALIDATE_RSP, response)
