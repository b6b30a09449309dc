"""`teamtalk chat`: a terminal client for trying a server from two terminals.

It requests a msg_server from login_server (or takes one from ``--msg-server``),
logs in, prints the recent sessions and the messages that arrived while the
user was offline, then runs two tasks: one reads commands and text lines from
stdin, the other prints pushed messages as they arrive. A message from the
current peer is read-acked as soon as it is shown, and choosing a peer with
``/to`` read-acks what was unread from that peer, as the original clients do
when a chat window opens.

The current target is a user (``/to``) or a group (``/group``). Group names
and members come from IMGroupInfoListRsp and are kept in memory, fetched
when a group id first appears and updated by IMGroupChangeMemberNotify and
by the IMGroupChangeMemberRsp of ``/add`` and ``/remove``.

Screen text is English, or Chinese when the locale (LC_ALL, LC_MESSAGES or
LANG, in that order of precedence) starts with ``zh``. All of it sits in
``TEXTS``.

Ctrl-C (SIGINT) before login ends the chat with exit status 130. Once
logged in, it quits like ``/quit``: the chat logs out, says goodbye and
exits with 0. A second Ctrl-C during that logout ends the chat at once.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import getpass
import logging
import os
import re
import signal
import sys
import threading
import time

import trio

from teamtalk.client import (
    DEFAULT_REQUEST_TIMEOUT,
    Client,
    ClientError,
    ClientTimeout,
    LoginRefused,
    MsgServerUnavailable,
    open_client,
    session_type_of,
)
from teamtalk.pb import IM_BaseDefine as BD

logger = logging.getLogger(__name__)

DEFAULT_HISTORY_COUNT = 10
MAX_HISTORY_COUNT = 200
MAX_OFFLINE_MESSAGES = 50  # per session, fetched at start
PREVIEW_LENGTH = 40  # characters of the latest message shown per session
MAX_LINE_LENGTH = 64 * 1024  # bytes of one input line read from a stream
MAX_ID = 0xFFFFFFFF  # user ids and group ids are uint32 on the wire
DEFAULT_LOGIN_HTTP_PORT = 8080  # HttpPort of the original loginserver.conf
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a process that Ctrl-C stopped

TEXTS = {
    "en": {
        "password_prompt": "Password: ",
        "looking_up": "Asking login_server {host}:{port} for a msg_server...",
        "connecting": "Connecting to msg_server {host}:{port}...",
        "logged_in": "Logged in as {name} (user id {user_id}) on msg_server {server}.",
        "login_refused": "Login rejected: {reason} (code {code}).",
        "refuse_no_msg_server": "no msg_server is available",
        "refuse_msg_server_full": "every msg_server is full",
        "refuse_no_db_server": "msg_server cannot reach db_proxy_server; try again later",
        "refuse_no_login_server": "msg_server cannot reach login_server; try again later",
        "refuse_no_route_server": "msg_server cannot reach route_server; try again later",
        "refuse_db_validate_failed": "wrong user name or password",
        "refuse_version_too_old": "this client version is too old",
        "refuse_no_reason": "no reason given",
        "no_msg_server": "login_server {host}:{port} has no msg_server to offer: {reason} (code {code}).",
        "not_http": ("Error: {host}:{port} does not answer HTTP. Give login_server's HTTP port "
                     "(HttpPort in loginserver.conf, default {default_port}) with --http-port."),
        "error": "Error: {error}",
        "interrupted": "Interrupted.",
        "no_password": "No password given.",
        "aes_unavailable": "--aes-key needs the Python package 'cryptography', which is not installed.",
        "aes_bad_key": "--aes-key must be 32 bytes long (AES-256), not {length}.",
        "sessions_header": "Recent sessions:",
        "session_line": "  {name} ({session_id}){unread}: {preview}",
        "session_unread": " [{count} unread]",
        "no_sessions": "No recent sessions.",
        "offline_header": "Unread messages from {name} ({count}):",
        "group_offline_header": "Unread messages in {group} ({count}):",
        "unread_header": "Unread messages: {total}",
        "unread_line": "  {name} ({session_id}): {count}",
        "no_unread": "No unread messages.",
        "message": "[{time}] {name}: {text}",
        "group_message": "[{time}] {group} {name}: {text}",
        "me": "me",
        "group_label": "#{name}",
        "group_name": "group {group_id}",
        "undecryptable": "[cannot decrypt this message]",
        "help_hint": "Type /help for the commands.",
        "help": (
            "Commands:\n"
            "  /to NAME_OR_ID     choose the user to talk to (nick name, real name or user id)\n"
            "  /groups            list your groups with their member and unread counts\n"
            "  /group NAME_OR_ID  talk in a group (group name or group id) until /to chooses a user again\n"
            "  /members           list the members of the current group\n"
            "  /add NAME,...      add users to the current group (names or user ids, separated by commas)\n"
            "  /remove NAME,...   remove users from the current group\n"
            "  /history [N]       show the last N messages with the current user or group (default 10)\n"
            "                     and mark them read\n"
            "  /unread            show the unread message counts\n"
            "  /sessions          show the recent sessions\n"
            "  /help              show this help\n"
            "  /quit              log out and leave (Ctrl-C and the end of input also quit)\n"
            "Any other line is sent to the current user or group. Start a line with // to send text that "
            "begins with /."
        ),
        "to_usage": "Usage: /to NAME_OR_ID",
        "peer_current": "You are talking to {name} ({user_id}).",
        "peer_set": "Now talking to {name} ({user_id}).",
        "peer_unknown": "No user matches '{query}'.",
        "peer_ambiguous": "'{query}' matches several users: {names}. Use the user id.",
        "peer_self": "You cannot send messages to yourself.",
        "no_peer": "Choose a user first: /to NAME_OR_ID, or a group: /group NAME_OR_ID",
        "group_usage": "Usage: /group NAME_OR_ID",
        "group_current": "You are talking in {group} ({group_id}).",
        "group_set": {"one": "Now talking in {group} ({group_id}), {count} member.",
                      "other": "Now talking in {group} ({group_id}), {count} members."},
        "group_unknown": "No group matches '{query}'.",
        "group_ambiguous": "'{query}' matches several groups: {names}. Use the group id.",
        "group_not_member": "You are not a member of {group} ({group_id}).",
        "no_group": "Choose a group first: /group NAME_OR_ID",
        "groups_header": "Your groups:",
        "group_line": {"one": "  {group} ({group_id}): {count} member{unread}",
                       "other": "  {group} ({group_id}): {count} members{unread}"},
        "no_groups": "You are not in any group.",
        "members_header": "Members of {group} ({count}):",
        "member_line": "  {name} ({user_id}){creator}",
        "member_creator": " [creator]",
        "member_joined": "* {names} joined {group}",
        "member_left": "* {names} left {group}",
        "self_added": "* You were added to {group}",
        "self_removed": "* You are no longer a member of {group}",
        "change_usage": "Usage: {command} NAME_OR_ID[,NAME_OR_ID...]",
        "members_added": "Added {names} to {group}.",
        "members_removed": "Removed {names} from {group}.",
        "members_unchanged": "Nothing changed in {group}.",
        "change_rejected": "The server did not allow this change to {group} (code {code}).",
        "change_no_response": ("No response from the server within {seconds:g} s. "
                               "Type /members to see whether the change was made."),
        "sent": "sent (msg_id {msg_id})",
        "send_failed": "Not sent: {error}",
        "send_not_acked": ("No acknowledgement from the server within {seconds:g} s; "
                           "the message may not have been delivered."),
        "history_header": {"one": "Last {count} message with {name}:",
                           "other": "Last {count} messages with {name}:"},
        "history_empty": "No messages with {name}.",
        "group_history_header": {"one": "Last {count} message in {group}:",
                                 "other": "Last {count} messages in {group}:"},
        "group_history_empty": "No messages in {group}.",
        "bad_count": "/history takes a number from 1 to {maximum}, e.g. /history 20",
        "unknown_command": "Unknown command {command}. Type /help for the commands.",
        "status_online": "{name} is online.",
        "status_offline": "{name} went offline.",
        "status_leave": "{name} is away.",
        "kicked": "The server logged you out: {reason}",
        "kick_duplicate": "you logged in somewhere else",
        "kick_mobile": "your mobile client logged this client out",
        "closed": "Connection closed: {reason}",
        "bye": "Bye.",
    },
    "zh": {
        "password_prompt": "密码：",
        "looking_up": "正在向登录服务器 {host}:{port} 查询消息服务器……",
        "connecting": "正在连接消息服务器 {host}:{port}……",
        "logged_in": "已登录：{name}（用户 ID {user_id}），消息服务器 {server}。",
        "login_refused": "登录被拒绝：{reason}（错误码 {code}）。",
        "refuse_no_msg_server": "没有可用的消息服务器",
        "refuse_msg_server_full": "所有消息服务器都已满",
        "refuse_no_db_server": "消息服务器连不上数据库代理服务器，请稍后再试",
        "refuse_no_login_server": "消息服务器连不上登录服务器，请稍后再试",
        "refuse_no_route_server": "消息服务器连不上路由服务器，请稍后再试",
        "refuse_db_validate_failed": "用户名或密码错误",
        "refuse_version_too_old": "客户端版本太旧",
        "refuse_no_reason": "服务器没有说明原因",
        "no_msg_server": "登录服务器 {host}:{port} 没有可分配的消息服务器：{reason}（错误码 {code}）。",
        "not_http": ("出错了：{host}:{port} 没有以 HTTP 应答。请用 --http-port 指定登录服务器的 HTTP 端口"
                     "（loginserver.conf 中的 HttpPort，默认 {default_port}）。"),
        "error": "出错了：{error}",
        "interrupted": "已中断。",
        "no_password": "没有输入密码。",
        "aes_unavailable": "使用 --aes-key 需要安装 Python 包 cryptography，当前未安装。",
        "aes_bad_key": "--aes-key 必须是 32 字节（AES-256），现在是 {length} 字节。",
        "sessions_header": "最近会话：",
        "session_line": "  {name}（{session_id}）{unread}：{preview}",
        "session_unread": " [{count} 条未读]",
        "no_sessions": "没有最近会话。",
        "offline_header": "{name} 发来的未读消息（{count} 条）：",
        "group_offline_header": "{group} 的未读消息（{count} 条）：",
        "unread_header": "未读消息共 {total} 条",
        "unread_line": "  {name}（{session_id}）：{count} 条",
        "no_unread": "没有未读消息。",
        "message": "[{time}] {name}：{text}",
        "group_message": "[{time}] {group} {name}：{text}",
        "me": "我",
        "group_label": "#{name}",
        "group_name": "群 {group_id}",
        "undecryptable": "[无法解密这条消息]",
        "help_hint": "输入 /help 查看命令。",
        "help": (
            "命令：\n"
            "  /to 名字或ID       选择聊天对象（昵称、真实姓名或用户 ID）\n"
            "  /groups            列出你的群及其成员数和未读数\n"
            "  /group 群名或ID    改为在群里聊天（群名或群 ID）；用 /to 回到单聊\n"
            "  /members           列出当前群的成员\n"
            "  /add 名字,...      把用户加入当前群（名字或用户 ID，用逗号分隔）\n"
            "  /remove 名字,...   把用户移出当前群\n"
            "  /history [N]       显示与当前用户或群的最近 N 条消息（默认 10 条）并标为已读\n"
            "  /unread            显示未读消息数\n"
            "  /sessions          显示最近会话\n"
            "  /help              显示本帮助\n"
            "  /quit              退出登录并离开（按 Ctrl-C 或输入结束时也会退出）\n"
            "其他输入会发送给当前用户或群。以 // 开头可以发送以 / 开头的内容。"
        ),
        "to_usage": "用法：/to 名字或ID",
        "peer_current": "当前聊天对象：{name}（{user_id}）。",
        "peer_set": "现在与 {name}（{user_id}）聊天。",
        "peer_unknown": "找不到用户“{query}”。",
        "peer_ambiguous": "“{query}”对应多个用户：{names}。请使用用户 ID。",
        "peer_self": "不能给自己发消息。",
        "no_peer": "请先选择聊天对象：/to 名字或ID，或者选择群：/group 群名或ID",
        "group_usage": "用法：/group 群名或ID",
        "group_current": "当前在 {group}（{group_id}）中聊天。",
        "group_set": "现在在 {group}（{group_id}）中聊天，共 {count} 人。",
        "group_unknown": "找不到群“{query}”。",
        "group_ambiguous": "“{query}”对应多个群：{names}。请使用群 ID。",
        "group_not_member": "你不是 {group}（{group_id}）的成员。",
        "no_group": "请先选择群：/group 群名或ID",
        "groups_header": "你的群：",
        "group_line": "  {group}（{group_id}）：{count} 人{unread}",
        "no_groups": "你还没有加入任何群。",
        "members_header": "{group} 的成员（{count} 人）：",
        "member_line": "  {name}（{user_id}）{creator}",
        "member_creator": " [群主]",
        "member_joined": "* {names} 加入了 {group}",
        "member_left": "* {names} 退出了 {group}",
        "self_added": "* 你被加入了 {group}",
        "self_removed": "* 你已不是 {group} 的成员",
        "change_usage": "用法：{command} 名字或ID[,名字或ID...]",
        "members_added": "已将 {names} 加入 {group}。",
        "members_removed": "已将 {names} 移出 {group}。",
        "members_unchanged": "{group} 的成员没有变化。",
        "change_rejected": "服务器不允许对 {group} 做这次更改（错误码 {code}）。",
        "change_no_response": "服务器在 {seconds:g} 秒内没有响应。输入 /members 可查看更改是否已生效。",
        "sent": "已发送（msg_id {msg_id}）",
        "send_failed": "发送失败：{error}",
        "send_not_acked": "服务器在 {seconds:g} 秒内没有确认收到，消息可能没有送达。",
        "history_header": "与 {name} 的最近 {count} 条消息：",
        "history_empty": "与 {name} 没有消息记录。",
        "group_history_header": "{group} 的最近 {count} 条消息：",
        "group_history_empty": "{group} 没有消息记录。",
        "bad_count": "/history 后面应为 1 到 {maximum} 的数字，例如 /history 20",
        "unknown_command": "未知命令 {command}。输入 /help 查看命令。",
        "status_online": "{name} 上线了。",
        "status_offline": "{name} 下线了。",
        "status_leave": "{name} 暂时离开。",
        "kicked": "你已被服务器下线：{reason}",
        "kick_duplicate": "你在别处登录了",
        "kick_mobile": "手机端让这个客户端下线了",
        "closed": "连接已断开：{reason}",
        "bye": "再见。",
    },
}

_STATUS_TEXT = {
    BD.USER_STATUS_ONLINE: "status_online",
    BD.USER_STATUS_OFFLINE: "status_offline",
    BD.USER_STATUS_LEAVE: "status_leave",
}
_MEMBER_CHANGE_TEXT = {
    BD.GROUP_MODIFY_TYPE_ADD: ("member_joined", "self_added"),
    BD.GROUP_MODIFY_TYPE_DEL: ("member_left", "self_removed"),
}
# The line that /add and /remove print when IMGroupChangeMemberRsp reports success.
_MEMBER_RESULT_TEXT = {
    BD.GROUP_MODIFY_TYPE_ADD: "members_added",
    BD.GROUP_MODIFY_TYPE_DEL: "members_removed",
}
_KICK_TEXT = {
    BD.KICK_REASON_DUPLICATE_USER: "kick_duplicate",
    BD.KICK_REASON_MOBILE_KICK: "kick_mobile",
}
# ResultType of IMLoginRes and IMMsgServRsp. The code of login_server's HTTP
# /msg_server uses the same numbers: 1 no msg_server, 2 all full.
_REFUSE_TEXT = {
    BD.REFUSE_REASON_NO_MSG_SERVER: "refuse_no_msg_server",
    BD.REFUSE_REASON_MSG_SERVER_FULL: "refuse_msg_server_full",
    BD.REFUSE_REASON_NO_DB_SERVER: "refuse_no_db_server",
    BD.REFUSE_REASON_NO_LOGIN_SERVER: "refuse_no_login_server",
    BD.REFUSE_REASON_NO_ROUTE_SERVER: "refuse_no_route_server",
    BD.REFUSE_REASON_DB_VALIDATE_FAILED: "refuse_db_validate_failed",
    BD.REFUSE_REASON_VERSION_TOO_OLD: "refuse_version_too_old",
}


def is_not_http_answer(exc: ClientError, host: str, port: int) -> bool:
    """Return True if ``exc`` means that the port of ``host`` replied to the HTTP request in another protocol.

    That is what a PDU port does: it closes the connection without a
    response, resets it, or sends binary data.

    NOTE: client.fetch_msg_server raises a plain ClientError in these cases,
    so they are recognised by the start of its message; keep the prefixes
    below in step with that function.
    """
    if type(exc) is not ClientError:
        return False
    where = f"login_server {host}:{port}"
    prefixes = (f"{where} sent an incomplete HTTP response", f"{where} sent an invalid HTTP status line",
                f"connection to {where} failed")
    return str(exc).startswith(prefixes)


def choose_language(choice: str = "auto", environ=None) -> str:
    """Return "zh" or "en": ``choice`` unless it is "auto", else from the locale variables."""
    if choice in TEXTS:
        return choice
    environ = os.environ if environ is None else environ
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = environ.get(name, "")
        if value:
            return "zh" if value.lower().startswith("zh") else "en"
    return "en"


class Screen:
    """A text stream that prints the strings of one language's ``TEXTS`` table.

    A text that depends on a number is a dict of plural forms: "one" is used
    when the ``count`` value is 1, "other" otherwise. Chinese has no plural,
    so its table contains plain strings.
    """

    def __init__(self, stream, language: str) -> None:
        self.stream = stream
        self.texts = TEXTS[language]

    def text(self, key: str, **values) -> str:
        template = self.texts[key]
        if isinstance(template, dict):
            template = template["one" if values["count"] == 1 else "other"]
        return template.format(**values)

    def say(self, key: str, **values) -> None:
        self.write_line(self.text(key, **values))

    def write_line(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def prompt(self, key: str) -> None:
        self.stream.write(self.texts[key])
        self.stream.flush()


# ----------------------------------------------------------------------
# Ctrl-C


class InterruptRouter:
    """Turns each SIGINT (Ctrl-C) into the cancellation of the innermost scope it opened.

    The chat opens one scope per phase: the whole chat before login, only
    the input loop once logged in. An interrupt while no scope is open is
    ignored.
    """

    def __init__(self) -> None:
        self._scopes: list[trio.CancelScope] = []

    @contextlib.contextmanager
    def open_cancel_scope(self):
        """Enter a new cancel scope that interrupts cancel until the ``with`` block ends.

        Afterwards interrupts go to the scope that received them before.
        """
        with trio.CancelScope() as scope:
            self._scopes.append(scope)
            try:
                yield scope
            finally:
                self._scopes.remove(scope)

    def interrupt(self) -> None:
        if self._scopes:
            self._scopes[-1].cancel()

    async def watch(self, interrupts) -> None:
        """Call :meth:`interrupt` once per item of the async iterable ``interrupts``, until it ends."""
        async for _ in interrupts:
            self.interrupt()


# ----------------------------------------------------------------------
# Input


class StreamLines:
    """Lines read from a Trio ReceiveStream of UTF-8 bytes (used by tests and pipes)."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self._eof = False

    async def readline(self) -> str | None:
        """Return the next line without its line ending, or None at the end of input."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[:end + 1]
                return line.decode("utf-8", errors="replace").rstrip("\r")
            if self._eof:
                if not self._buffer:
                    return None
                line, self._buffer = bytes(self._buffer), bytearray()
                return line.decode("utf-8", errors="replace")
            if len(self._buffer) > MAX_LINE_LENGTH:
                # An overlong line is cut, and its rest is read as the next line.
                line = bytes(self._buffer[:MAX_LINE_LENGTH])
                del self._buffer[:MAX_LINE_LENGTH]
                return line.decode("utf-8", errors="replace")
            data = await self._stream.receive_some(4096)
            if data:
                self._buffer += data
            else:
                self._eof = True


class FileLines:
    """Lines read from a blocking text file such as sys.stdin, in a worker thread.

    A thread keeps the terminal's file descriptor in blocking mode, which the
    shell that started us shares. On cancellation the thread is abandoned and
    stays blocked until the next line or the end of input.
    """

    def __init__(self, file) -> None:
        self._file = file

    async def readline(self) -> str | None:
        line = await trio.to_thread.run_sync(self._file.readline, abandon_on_cancel=True)
        if not line:
            return None
        return line.rstrip("\r\n")


# ----------------------------------------------------------------------
# msg_data encoding


class PlainCodec:
    """msg_data as plain UTF-8.

    NOTE: the original clients encrypt msg_data (see AesCodec), so they
    cannot decrypt our plain messages, and we show theirs as undecryptable
    unless the chat runs with the same --aes-key.
    """

    def encode(self, text: str) -> bytes:
        return text.encode("utf-8")

    def decode(self, data: bytes) -> str | None:
        return data.decode("utf-8", errors="replace")


class AesCodec:
    """msg_data encrypted like the original clients: AES-256-ECB, then base64.

    This is the scheme of ``CAes`` in the original server/src/base/EncDec.cpp,
    which the servers use to read the clients' messages for push text.

    The plain bytes are zero-padded to whole 16-byte blocks, and the last four
    bytes of the last block hold the plain length as a big-endian uint32. A
    block is added when fewer than four bytes are left for the length.
    """

    BLOCK = 16

    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        if len(key) != 32:
            raise ValueError(f"AES-256 key must be 32 bytes, not {len(key)}")
        self._cipher = Cipher(algorithms.AES(key), modes.ECB())

    def encode(self, text: str) -> bytes:
        plain = text.encode("utf-8")
        blocks = -(-len(plain) // self.BLOCK)
        remainder = len(plain) % self.BLOCK
        if remainder == 0 or remainder > self.BLOCK - 4:
            blocks += 1
        padded = bytearray(blocks * self.BLOCK)
        padded[:len(plain)] = plain
        padded[-4:] = len(plain).to_bytes(4, "big")
        encryptor = self._cipher.encryptor()
        return base64.b64encode(encryptor.update(bytes(padded)) + encryptor.finalize())

    def decode(self, data: bytes) -> str | None:
        """Return the decrypted text, or None when ``data`` is not such a ciphertext."""
        try:
            encrypted = base64.b64decode(data, validate=True)
        except ValueError:
            return None
        if not encrypted or len(encrypted) % self.BLOCK:
            return None
        decryptor = self._cipher.decryptor()
        plain = decryptor.update(encrypted) + decryptor.finalize()
        length = int.from_bytes(plain[-4:], "big")
        if length > len(plain) - 4:
            return None
        return plain[:length].decode("utf-8", errors="replace")


def make_codec(aes_key: str | None):
    """Return the msg_data codec for ``--aes-key``; raise ImportError or ValueError."""
    if aes_key is None:
        return PlainCodec()
    return AesCodec(aes_key.encode("utf-8"))


# ----------------------------------------------------------------------
# The chat session


class ChatSession:
    """The state of one logged-in chat: known users and groups, current target, unread messages."""

    def __init__(self, client: Client, screen: Screen, lines, codec,
                 interrupts: InterruptRouter | None = None) -> None:
        self.client = client
        self.screen = screen
        self.lines = lines
        self.codec = codec
        self.interrupts = interrupts if interrupts is not None else InterruptRouter()
        self.users: dict[int, BD.UserInfo] = {}
        self.groups: dict[int, BD.GroupInfo] = {}
        # (session_type, session_id) that plain lines go to, or None.
        self.target: tuple[int, int] | None = None
        # Latest unread msg_id per (session_type, session_id), read-acked when shown.
        self.unread_latest: dict[tuple[int, int], int] = {}
        self.quitting = False
        self.exit_code = 0
        self.commands = {
            "/to": self.command_to,
            "/groups": self.command_groups,
            "/group": self.command_group,
            "/members": self.command_members,
            "/add": self.command_add,
            "/remove": self.command_remove,
            "/history": self.command_history,
            "/unread": self.command_unread,
            "/sessions": self.command_sessions,
            "/help": self.command_help,
        }

    @property
    def peer_id(self) -> int | None:
        """User id of the current target when it is a user."""
        if self.target is not None and self.target[0] == BD.SESSION_TYPE_SINGLE:
            return self.target[1]
        return None

    @property
    def group_id(self) -> int | None:
        """Group id of the current target when it is a group."""
        if self.target is not None and self.target[0] == BD.SESSION_TYPE_GROUP:
            return self.target[1]
        return None

    async def run(self) -> int:
        """Show the start-up screens, then chat until /quit, Ctrl-C, end of input or a closed connection.

        Returns the exit status: 0 after /quit, Ctrl-C or the end of input,
        1 when the connection closed. /quit, Ctrl-C and the end of input log
        out first. A Ctrl-C during that logout goes to the caller's scope of
        ``self.interrupts`` and cancels the logout.
        """
        async with trio.open_nursery() as nursery:
            with self.interrupts.open_cancel_scope() as input_scope:
                await self.show_start_screens()
                nursery.start_soon(self.print_events, nursery.cancel_scope)
                await self.read_commands()
            if input_scope.cancelled_caught:
                # The terminal shows ^C without a line break.
                self.screen.write_line("")
            await self.quit()
            nursery.cancel_scope.cancel()
        return self.exit_code

    async def show_start_screens(self) -> None:
        await self.load_users()
        me = self.client.user_id
        self.screen.say("logged_in", name=self.name_of(me), user_id=me, server=self.client.peer)
        try:
            unread = await self.client.unread_counts()
            await self.show_sessions(unread)
            await self.show_offline_messages(unread)
        except ClientError as exc:
            self.screen.say("error", error=exc)
        self.screen.say("help_hint")

    # -- users

    async def load_users(self) -> None:
        if self.client.user_info is not None:
            self.users[self.client.user_id] = self.client.user_info
        try:
            response = await self.client.all_users(0)
        except ClientError as exc:
            logger.info("all_users failed, only user ids will work in /to: %s", exc)
            return
        for user in response.user_list:
            self.users[user.user_id] = user

    async def learn_users(self, user_ids) -> None:
        """Fetch the UserInfo of users not known yet; failures leave them shown by id."""
        missing = sorted({user_id for user_id in user_ids if user_id and user_id not in self.users})
        if not missing:
            return
        try:
            response = await self.client.users_info(missing)
        except ClientError as exc:
            logger.info("users_info for %d users failed: %s", len(missing), exc)
            return
        for user in response.user_info_list:
            self.users[user.user_id] = user

    def name_of(self, user_id: int) -> str:
        user = self.users.get(user_id)
        if user is None:
            return str(user_id)
        return user.user_nick_name or user.user_real_name or str(user_id)

    def session_name(self, session_type: int, session_id: int) -> str:
        if session_type == BD.SESSION_TYPE_GROUP:
            return self.group_label(session_id)
        return self.name_of(session_id)

    # -- groups

    async def fetch_groups(self, group_ids) -> None:
        """Fetch and store the GroupInfo of ``group_ids``, raising ClientError when the request fails.

        A group that the server leaves out of its response (one that does not
        exist or was dissolved) keeps what was stored before, if anything.
        """
        group_ids = sorted(set(group_ids))
        if not group_ids:
            return
        response = await self.client.groups_info(group_ids)
        for group in response.group_info_list:
            self.groups[group.group_id] = group

    async def learn_groups(self, group_ids) -> None:
        """Fetch the GroupInfo of groups not known yet; failures leave them shown by id."""
        missing = [group_id for group_id in group_ids if group_id and group_id not in self.groups]
        try:
            await self.fetch_groups(missing)
        except ClientError as exc:
            logger.info("groups_info for %d groups failed: %s", len(missing), exc)

    async def load_groups(self) -> list[int]:
        """Fetch the user's normal groups, refresh the new or changed ones, and return their ids.

        NOTE: IMNormalGroupListRsp lists normal groups only, so a temporary
        group is known only once a recent session, a message or a member
        change notify names it.
        """
        response = await self.client.normal_groups()
        stale = [info.group_id for info in response.group_version_list
                 if info.group_id not in self.groups or self.groups[info.group_id].version < info.version]
        await self.fetch_groups(stale)
        return [info.group_id for info in response.group_version_list]

    def group_label(self, group_id: int) -> str:
        group = self.groups.get(group_id)
        if group is None or not group.group_name:
            return self.screen.text("group_name", group_id=group_id)
        return self.screen.text("group_label", name=group.group_name)

    def is_member(self, group_id: int) -> bool:
        group = self.groups.get(group_id)
        return group is not None and self.client.user_id in group.group_member_list

    async def store_members(self, group_id: int, member_ids) -> None:
        """Replace the cached member list of a group, or fetch the GroupInfo of a group not known yet."""
        group = self.groups.get(group_id)
        if group is None:
            await self.learn_groups([group_id])
        else:
            del group.group_member_list[:]
            group.group_member_list.extend(member_ids)

    def leave_group(self, group_id: int) -> None:
        """Forget the unread messages of a group the user was removed from, and stop talking in it."""
        self.unread_latest.pop((BD.SESSION_TYPE_GROUP, group_id), None)
        if self.group_id == group_id:
            self.target = None

    # -- printing messages

    def decode(self, data: bytes) -> str:
        text = self.codec.decode(data)
        return self.screen.text("undecryptable") if text is None else text

    def print_message(self, from_user_id: int, create_time: int, data: bytes, session_type: int,
                      session_id: int, with_date: bool = False) -> None:
        if from_user_id == self.client.user_id:
            name = self.screen.text("me")
            if session_type == BD.SESSION_TYPE_SINGLE and session_id != from_user_id:
                name = f"{name} → {self.name_of(session_id)}"
        else:
            name = self.name_of(from_user_id)
        pattern = "%Y-%m-%d %H:%M" if with_date else "%H:%M:%S"
        stamp = time.strftime(pattern, time.localtime(create_time))
        if session_type == BD.SESSION_TYPE_GROUP:
            self.screen.say("group_message", time=stamp, group=self.group_label(session_id), name=name,
                            text=self.decode(data))
        else:
            self.screen.say("message", time=stamp, name=name, text=self.decode(data))

    async def show_sessions(self, unread) -> None:
        counts = {(info.session_type, info.session_id): info.unread_cnt for info in unread.unreadinfo_list}
        response = await self.client.recent_sessions(0)
        sessions = [session for session in response.contact_session_list
                    if session.session_status == BD.SESSION_STATUS_OK]
        sessions.sort(key=lambda session: session.updated_time, reverse=True)
        await self.learn_users(session.session_id for session in sessions
                               if session.session_type == BD.SESSION_TYPE_SINGLE)
        await self.learn_groups(session.session_id for session in sessions
                                if session.session_type == BD.SESSION_TYPE_GROUP)
        if not sessions:
            self.screen.say("no_sessions")
            return

        self.screen.say("sessions_header")
        for session in sessions:
            count = counts.get((session.session_type, session.session_id), 0)
            unread_text = self.screen.text("session_unread", count=count) if count else ""
            preview = self.decode(session.latest_msg_data).replace("\n", " ")
            if len(preview) > PREVIEW_LENGTH:
                preview = preview[:PREVIEW_LENGTH] + "…"
            self.screen.say("session_line", name=self.session_name(session.session_type, session.session_id),
                            session_id=session.session_id, unread=unread_text, preview=preview)

    async def show_offline_messages(self, unread) -> None:
        """Print the unread messages of each session, oldest first, and remember them as unread."""
        await self.learn_users(info.session_id for info in unread.unreadinfo_list
                               if info.session_type == BD.SESSION_TYPE_SINGLE)
        await self.learn_groups(info.session_id for info in unread.unreadinfo_list
                                if info.session_type == BD.SESSION_TYPE_GROUP)
        for info in unread.unreadinfo_list:
            if info.unread_cnt == 0:
                continue
            count = min(info.unread_cnt, MAX_OFFLINE_MESSAGES)
            response = await self.client.message_list(info.session_id, info.session_type, 0, count)
            messages = sorted(response.msg_list, key=lambda msg: msg.msg_id)
            await self.learn_users(msg.from_session_id for msg in messages)
            if info.session_type == BD.SESSION_TYPE_GROUP:
                self.screen.say("group_offline_header", group=self.group_label(info.session_id),
                                count=info.unread_cnt)
            else:
                self.screen.say("offline_header", name=self.name_of(info.session_id), count=info.unread_cnt)
            for msg in messages:
                self.print_message(msg.from_session_id, msg.create_time, msg.msg_data, info.session_type,
                                   info.session_id, with_date=True)
            latest = max([info.latest_msg_id] + [msg.msg_id for msg in messages])
            self.unread_latest[(info.session_type, info.session_id)] = latest

    # -- pushed events

    async def print_events(self, cancel_scope: trio.CancelScope) -> None:
        """Print pushed events until the connection closes, then end the chat."""
        async for event in self.client.events_receive:
            try:
                await self.handle_event(event)
            except ClientError as exc:
                self.screen.say("error", error=exc)
        if not self.quitting:
            if self.client.kick_reason is not None:
                reason_key = _KICK_TEXT.get(self.client.kick_reason)
                reason = self.screen.text(reason_key) if reason_key else str(self.client.kick_reason)
                self.screen.say("kicked", reason=reason)
            else:
                self.screen.say("closed", reason=self.client.close_reason)
            self.exit_code = 1
        cancel_scope.cancel()

    async def handle_event(self, event) -> None:
        message = event.message
        if event.command_id == BD.CID_MSG_DATA:
            await self.show_delivered(message)
        elif event.command_id == BD.CID_BUDDY_LIST_STATUS_NOTIFY:
            stat = message.user_stat
            key = _STATUS_TEXT.get(stat.status)
            if key is not None and stat.user_id != self.client.user_id:
                await self.learn_users([stat.user_id])
                self.screen.say(key, name=self.name_of(stat.user_id))
        elif event.command_id == BD.CID_MSG_READ_NOTIFY:
            # Another device of ours read this session.
            self.unread_latest.pop((message.session_type, message.session_id), None)
        elif event.command_id == BD.CID_GROUP_CHANGE_MEMBER_NOTIFY:
            await self.show_member_change(message)
        else:
            logger.debug("not shown: %s", event.name)

    async def show_delivered(self, msg) -> None:
        session_type = session_type_of(msg.msg_type)
        session_id = self.client.session_of(msg)
        if session_type == BD.SESSION_TYPE_SINGLE:
            await self.learn_users([msg.from_user_id, session_id])
        else:
            await self.learn_users([msg.from_user_id])
            await self.learn_groups([session_id])
        self.print_message(msg.from_user_id, msg.create_time, msg.msg_data, session_type, session_id)
        if msg.from_user_id == self.client.user_id:
            return
        if (session_type, session_id) == self.target:
            await self.client.read_ack(session_id, msg.msg_id, session_type)
        else:
            self.unread_latest[(session_type, session_id)] = msg.msg_id

    async def show_member_change(self, notify) -> None:
        """Print who an IMGroupChangeMemberNotify adds or removes: one line for others, one for this user."""
        keys = _MEMBER_CHANGE_TEXT.get(notify.change_type)
        if keys is None:
            logger.info("group %d: member change of unknown change_type %d not shown",
                        notify.group_id, notify.change_type)
            return
        others_key, self_key = keys

        # The notify carries the members after the change.
        group_id = notify.group_id
        await self.store_members(group_id, notify.cur_user_id_list)

        me = self.client.user_id
        others = [user_id for user_id in notify.chg_user_id_list if user_id != me]
        label = self.group_label(group_id)
        if others:
            await self.learn_users(others)
            self.screen.say(others_key, names=", ".join(self.name_of(user_id) for user_id in others), group=label)
        if me in notify.chg_user_id_list:
            self.screen.say(self_key, group=label)
            if notify.change_type == BD.GROUP_MODIFY_TYPE_DEL:
                self.leave_group(group_id)

    # -- commands

    async def read_commands(self) -> None:
        """Run commands and send text lines until /quit or the end of input (the caller logs out)."""
        while True:
            line = await self.lines.readline()
            if line is None:
                break
            line = line.strip()
            if not line:
                continue
            if line.startswith("//"):
                await self.send(line[1:])
                continue
            if not line.startswith("/"):
                await self.send(line)
                continue

            command, _, argument = line.partition(" ")
            command = command.lower()
            if command == "/quit":
                break
            handler = self.commands.get(command)
            if handler is None:
                self.screen.say("unknown_command", command=command)
                continue
            try:
                await handler(argument.strip())
            except ClientError as exc:
                self.screen.say("error", error=exc)

    async def quit(self) -> None:
        """Log out, waiting at most 5 s for IMLogoutRsp, and print the goodbye line."""
        self.quitting = True
        if not self.client.closed:
            try:
                await self.client.logout(timeout=min(self.client.request_timeout, 5.0))
            except ClientError as exc:
                logger.info("logout failed: %s", exc)
        self.screen.say("bye")

    async def send(self, text: str) -> None:
        if self.target is None:
            self.screen.say("no_peer")
            return
        session_type, session_id = self.target
        # The server stores no group message from a non-member and sends no IMMsgDataAck for it.
        if session_type == BD.SESSION_TYPE_GROUP and not self.is_member(session_id):
            self.screen.say("group_not_member", group=self.group_label(session_id), group_id=session_id)
            return
        try:
            ack = await self.client.send_text(session_id, self.codec.encode(text), session_type=session_type)
        except ClientTimeout:
            self.screen.say("send_not_acked", seconds=self.client.request_timeout)
            return
        except (ClientError, ValueError) as exc:
            self.screen.say("send_failed", error=exc)
            return
        self.screen.say("sent", msg_id=ack.msg_id)

    async def command_to(self, argument: str) -> None:
        if not argument:
            if self.peer_id is None:
                self.screen.say("to_usage")
            else:
                self.screen.say("peer_current", name=self.name_of(self.peer_id), user_id=self.peer_id)
            return
        user_id = await self.find_user(argument)
        if user_id is None:
            return
        if user_id == self.client.user_id:
            self.screen.say("peer_self")
            return

        self.target = (BD.SESSION_TYPE_SINGLE, user_id)
        self.screen.say("peer_set", name=self.name_of(user_id), user_id=user_id)
        latest = self.unread_latest.pop((BD.SESSION_TYPE_SINGLE, user_id), None)
        if latest:
            await self.client.read_ack(user_id, latest, BD.SESSION_TYPE_SINGLE)

    async def find_user(self, query: str) -> int | None:
        """Return the user id that ``query`` names (an id, nick, real name or domain), else print why not."""
        if query.isdigit():
            user_id = int(query)
            if not 1 <= user_id <= MAX_ID:
                self.screen.say("peer_unknown", query=query)
                return None
            await self.learn_users([user_id])
            return user_id

        wanted = query.casefold()

        def names(user):
            return (user.user_nick_name.casefold(), user.user_real_name.casefold(), user.user_domain.casefold())

        matches = [user for user in self.users.values() if wanted in names(user)]
        if not matches:
            matches = [user for user in self.users.values()
                       if any(name.startswith(wanted) for name in names(user) if name)]
        if len(matches) == 1:
            return matches[0].user_id
        if not matches:
            self.screen.say("peer_unknown", query=query)
        else:
            listed = ", ".join(f"{self.name_of(user.user_id)} ({user.user_id})" for user in matches[:10])
            self.screen.say("peer_ambiguous", query=query, names=listed)
        return None

    async def command_groups(self, argument: str) -> None:
        await self.load_groups()
        unread = await self.client.unread_counts()
        counts = {info.session_id: info.unread_cnt for info in unread.unreadinfo_list
                  if info.session_type == BD.SESSION_TYPE_GROUP}
        await self.learn_groups(counts)

        # The cached member lists decide, so a group that a member change
        # removed the user from is left out even while IMNormalGroupListRsp
        # still names it.
        group_ids = [group_id for group_id in self.groups if self.is_member(group_id)]
        if not group_ids:
            self.screen.say("no_groups")
            return
        self.screen.say("groups_header")
        for group_id in sorted(group_ids, key=lambda group_id: (self.groups[group_id].group_name.casefold(),
                                                                group_id)):
            count = counts.get(group_id, 0)
            unread_text = self.screen.text("session_unread", count=count) if count else ""
            self.screen.say("group_line", group=self.group_label(group_id), group_id=group_id,
                            count=len(self.groups[group_id].group_member_list), unread=unread_text)

    async def command_group(self, argument: str) -> None:
        if not argument:
            if self.group_id is None:
                self.screen.say("group_usage")
            else:
                self.screen.say("group_current", group=self.group_label(self.group_id), group_id=self.group_id)
            return
        group_id = await self.find_group(argument)
        if group_id is None:
            return
        if not self.is_member(group_id):
            self.screen.say("group_not_member", group=self.group_label(group_id), group_id=group_id)
            return

        self.target = (BD.SESSION_TYPE_GROUP, group_id)
        self.screen.say("group_set", group=self.group_label(group_id), group_id=group_id,
                        count=len(self.groups[group_id].group_member_list))
        latest = self.unread_latest.pop((BD.SESSION_TYPE_GROUP, group_id), None)
        if latest:
            await self.client.read_ack(group_id, latest, BD.SESSION_TYPE_GROUP)

    async def find_group(self, query: str) -> int | None:
        """Return the id of a known group that ``query`` names (a group id or name), else print why not.

        Names match the user's groups only, exactly (ignoring case) or else
        by prefix. When nothing matches, the group list is fetched again once,
        since the group may be new.
        """
        if query.isdigit():
            group_id = int(query)
            if 1 <= group_id <= MAX_ID:
                await self.learn_groups([group_id])
                if group_id in self.groups:
                    return group_id
            self.screen.say("group_unknown", query=query)
            return None

        matches = self.groups_named(query)
        if not matches:
            await self.load_groups()
            matches = self.groups_named(query)
        if len(matches) == 1:
            return matches[0]
        if not matches:
            self.screen.say("group_unknown", query=query)
        else:
            listed = ", ".join(f"{self.group_label(group_id)} ({group_id})" for group_id in matches[:10])
            self.screen.say("group_ambiguous", query=query, names=listed)
        return None

    def groups_named(self, query: str) -> list[int]:
        """Return the ids of the user's groups named ``query``, else of those whose name starts with it.

        Case and a leading ``#`` in ``query`` are ignored.
        """
        wanted = query.casefold().removeprefix("#")
        mine = sorted(group_id for group_id in self.groups if self.is_member(group_id))
        exact = [group_id for group_id in mine if self.groups[group_id].group_name.casefold() == wanted]
        if exact:
            return exact
        return [group_id for group_id in mine if self.groups[group_id].group_name.casefold().startswith(wanted)]

    async def command_members(self, argument: str) -> None:
        group_id = self.group_id
        if group_id is None:
            self.screen.say("no_group")
            return
        await self.fetch_groups([group_id])
        group = self.groups[group_id]
        await self.learn_users(group.group_member_list)

        members = sorted(group.group_member_list, key=lambda user_id: (self.name_of(user_id).casefold(), user_id))
        self.screen.say("members_header", group=self.group_label(group_id), count=len(members))
        for user_id in members:
            creator = self.screen.text("member_creator") if user_id == group.group_creator_id else ""
            self.screen.say("member_line", name=self.name_of(user_id), user_id=user_id, creator=creator)

    async def command_add(self, argument: str) -> None:
        await self.change_members("/add", BD.GROUP_MODIFY_TYPE_ADD, argument)

    async def command_remove(self, argument: str) -> None:
        await self.change_members("/remove", BD.GROUP_MODIFY_TYPE_DEL, argument)

    async def change_members(self, command: str, change_type: int, argument: str) -> None:
        """Add or remove the users that ``argument`` names in the current group, and print the result.

        ``argument`` is a list of user names or ids separated by commas
        (ASCII or full-width, as Chinese input methods type them). Nothing
        is sent when one of them matches no user or several. The server
        sends the requesting connection IMGroupChangeMemberRsp and no
        IMGroupChangeMemberNotify, so the result line here is the only one.
        """
        group_id = self.group_id
        if group_id is None:
            self.screen.say("no_group")
            return
        queries = [query.strip() for query in re.split("[,，]", argument) if query.strip()]
        if not queries:
            self.screen.say("change_usage", command=command)
            return
        user_ids = []
        for query in queries:
            user_id = await self.find_user(query)
            if user_id is None:
                return
            if user_id not in self.users:
                # find_user accepts any user id in range, but users_info returned no user for this one.
                self.screen.say("peer_unknown", query=query)
                return
            if user_id not in user_ids:
                user_ids.append(user_id)

        try:
            response = await self.client.change_group_members(group_id, change_type, user_ids)
        except ClientTimeout:
            self.screen.say("change_no_response", seconds=self.client.request_timeout)
            return
        label = self.group_label(group_id)
        if response.result_code != 0:
            self.screen.say("change_rejected", group=label, code=response.result_code)
            return

        await self.store_members(group_id, response.cur_user_id_list)
        changed = list(response.chg_user_id_list)
        if not changed:
            self.screen.say("members_unchanged", group=label)
            return
        await self.learn_users(changed)
        names = ", ".join(self.name_of(user_id) for user_id in changed)
        self.screen.say(_MEMBER_RESULT_TEXT[change_type], names=names, group=label)
        if change_type == BD.GROUP_MODIFY_TYPE_DEL and self.client.user_id in changed:
            self.screen.say("self_removed", group=label)
            self.leave_group(group_id)

    async def command_history(self, argument: str) -> None:
        if self.target is None:
            self.screen.say("no_peer")
            return
        count = DEFAULT_HISTORY_COUNT
        if argument:
            if not argument.isdigit() or not 1 <= int(argument) <= MAX_HISTORY_COUNT:
                self.screen.say("bad_count", maximum=MAX_HISTORY_COUNT)
                return
            count = int(argument)

        session_type, session_id = self.target
        response = await self.client.message_list(session_id, session_type, 0, count)
        messages = sorted(response.msg_list, key=lambda msg: msg.msg_id)
        await self.learn_users(msg.from_session_id for msg in messages)
        if session_type == BD.SESSION_TYPE_GROUP:
            label = self.group_label(session_id)
            if not messages:
                self.screen.say("group_history_empty", group=label)
                return
            self.screen.say("group_history_header", count=len(messages), group=label)
        else:
            if not messages:
                self.screen.say("history_empty", name=self.name_of(session_id))
                return
            self.screen.say("history_header", count=len(messages), name=self.name_of(session_id))
        for msg in messages:
            self.print_message(msg.from_session_id, msg.create_time, msg.msg_data, session_type, session_id,
                               with_date=True)
        self.unread_latest.pop((session_type, session_id), None)
        await self.client.read_ack(session_id, messages[-1].msg_id, session_type)

    async def command_unread(self, argument: str) -> None:
        response = await self.client.unread_counts()
        if not response.unreadinfo_list:
            self.screen.say("no_unread")
            return
        await self.learn_users(info.session_id for info in response.unreadinfo_list
                               if info.session_type == BD.SESSION_TYPE_SINGLE)
        await self.learn_groups(info.session_id for info in response.unreadinfo_list
                                if info.session_type == BD.SESSION_TYPE_GROUP)
        self.screen.say("unread_header", total=response.total_cnt)
        for info in response.unreadinfo_list:
            self.screen.say("unread_line", name=self.session_name(info.session_type, info.session_id),
                            session_id=info.session_id, count=info.unread_cnt)

    async def command_sessions(self, argument: str) -> None:
        await self.show_sessions(await self.client.unread_counts())

    async def command_help(self, argument: str) -> None:
        self.screen.say("help")


# ----------------------------------------------------------------------
# Entry points


async def run_chat(args: argparse.Namespace, stdin=None, stdout=None, interrupts=None) -> int:
    """Run ``teamtalk chat`` and return its exit status.

    The status is 0 after /quit, Ctrl-C or the end of input once logged in,
    1 when the login or the connection fails, 2 for an unusable --aes-key,
    and 130 after Ctrl-C before login or during the logout.

    ``stdin`` is a Trio ReceiveStream of UTF-8 bytes or a text file, and
    defaults to sys.stdin. ``stdout`` is a text file and defaults to
    sys.stdout. Without ``--password``, the password is the first input
    line (:func:`chat_main` prompts for it with getpass before this runs).
    ``interrupts`` is an async iterable with one item per Ctrl-C, such as
    the receiver of ``trio.open_signal_receiver(signal.SIGINT)``. Without
    it, SIGINT raises KeyboardInterrupt as Trio does by default.
    """
    screen = Screen(stdout if stdout is not None else sys.stdout, choose_language(args.lang))
    if stdin is not None and hasattr(stdin, "receive_some"):
        lines = StreamLines(stdin)
    else:
        lines = FileLines(stdin if stdin is not None else sys.stdin)
    codec = make_codec_or_explain(args.aes_key, screen)
    if codec is None:
        return 2

    router = InterruptRouter()
    status = EXIT_INTERRUPTED
    async with trio.open_nursery() as nursery:
        if interrupts is not None:
            nursery.start_soon(router.watch, interrupts)
        with router.open_cancel_scope() as chat_scope:
            status = await _log_in_and_chat(args, screen, lines, codec, router)
        nursery.cancel_scope.cancel()
    if chat_scope.cancelled_caught:
        # The terminal shows ^C without a line break.
        screen.write_line("")
        screen.say("interrupted")
        return EXIT_INTERRUPTED
    return status


async def _log_in_and_chat(args: argparse.Namespace, screen: Screen, lines, codec, router: InterruptRouter) -> int:
    """Log in and run the chat; print why and return 1 when the login or the connection fails."""
    password = args.password
    if password is None:
        screen.prompt("password_prompt")
        password = await lines.readline() or ""

    client_options = {"request_timeout": args.timeout}
    try:
        if args.msg_server is not None:
            host, port = args.msg_server
            screen.say("connecting", host=host, port=port)
            async with Client.connect(host, port, connect_timeout=args.timeout, **client_options) as client:
                await client.login(args.user, password)
                return await ChatSession(client, screen, lines, codec, router).run()
        screen.say("looking_up", host=args.login_host, port=args.http_port)
        async with open_client(args.login_host, args.http_port, args.user, password,
                               client_options=client_options, connect_timeout=args.timeout) as client:
            return await ChatSession(client, screen, lines, codec, router).run()
    except LoginRefused as exc:
        reason = refuse_reason(screen, exc.result_code, exc.result_string)
        screen.say("login_refused", reason=reason, code=exc.result_code)
        return 1
    except MsgServerUnavailable as exc:
        reason = refuse_reason(screen, exc.code, exc.message)
        screen.say("no_msg_server", host=args.login_host, port=args.http_port, reason=reason, code=exc.code)
        return 1
    except ClientError as exc:
        if args.msg_server is None and is_not_http_answer(exc, args.login_host, args.http_port):
            screen.say("not_http", host=args.login_host, port=args.http_port, default_port=DEFAULT_LOGIN_HTTP_PORT)
        else:
            screen.say("error", error=exc)
        return 1


def refuse_reason(screen: Screen, code: int, server_text: str) -> str:
    """Return the screen text of a ResultType ``code``, or ``server_text`` for a code not in ``TEXTS``."""
    key = _REFUSE_TEXT.get(code)
    if key is not None:
        return screen.text(key)
    return server_text or screen.text("refuse_no_reason")


def make_codec_or_explain(aes_key: str | None, screen: Screen):
    """Return the msg_data codec for ``--aes-key``, or None after printing why the key cannot be used."""
    try:
        return make_codec(aes_key)
    except ImportError:
        screen.say("aes_unavailable")
    except ValueError:
        screen.say("aes_bad_key", length=len(aes_key.encode("utf-8")))
    return None


def parse_host_port(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[::1]:8000`` for IPv6) for argparse."""
    host, separator, port = text.rpartition(":")
    host = host.strip("[]")
    if not separator or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT with a port from 1 to 65535, not {text!r}")
    return host, int(port)


def parse_port(text: str) -> int:
    """Parse a TCP port number from 1 to 65535 for argparse."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, not {text!r}")
    return int(text)


def chat_main(args: argparse.Namespace) -> int:
    """Run the chat in a new Trio run; the ``func`` of the ``chat`` subcommand.

    Without ``--password``, getpass prompts for the password first, in this
    thread and outside Trio. Ctrl-C at that prompt then ends the
    command at once, and getpass restores the terminal's echo on its way out.
    """
    screen = Screen(sys.stdout, choose_language(args.lang))
    if make_codec_or_explain(args.aes_key, screen) is None:
        return 2
    if args.password is None:
        try:
            password = getpass.getpass(screen.text("password_prompt"))
        except KeyboardInterrupt:
            screen.write_line("")
            screen.say("interrupted")
            return EXIT_INTERRUPTED
        except EOFError:
            screen.write_line("")
            screen.say("no_password")
            return 1
        args = argparse.Namespace(**{**vars(args), "password": password})

    try:
        return trio.run(_run_chat_with_sigint, args)
    except KeyboardInterrupt:
        # SIGINT came before the signal receiver was set up or after it closed.
        screen.write_line("")
        screen.say("interrupted")
        return EXIT_INTERRUPTED


async def _run_chat_with_sigint(args: argparse.Namespace) -> int:
    # Python runs signal handlers in the main thread only, so in another
    # thread (as in tests) SIGINT cannot reach the chat anyway.
    if threading.current_thread() is not threading.main_thread():
        return await run_chat(args)
    with trio.open_signal_receiver(signal.SIGINT) as interrupts:
        return await run_chat(args, interrupts=interrupts)


def add_chat_command(subparsers) -> argparse.ArgumentParser:
    """Register the ``chat`` subcommand on an argparse subparsers object and return its parser."""
    parser = subparsers.add_parser(
        "chat",
        help="chat from a terminal, to try a server",
        description="Log in to a TeamTalk server and chat from the terminal. Incoming messages are "
                    "printed as they arrive; type /help once logged in for the commands.",
    )
    parser.add_argument("--login-host", default="127.0.0.1",
                        help="login_server host (default: %(default)s)")
    parser.add_argument("--http-port", type=parse_port, default=DEFAULT_LOGIN_HTTP_PORT,
                        help="login_server's HTTP port, which hands out msg_servers at /msg_server "
                             "(HttpPort in loginserver.conf; default: %(default)s)")
    # The first name of --http-port, still accepted. It is hidden because
    # `teamtalk serve --login-port` sets login_server's PDU port instead.
    parser.add_argument("--login-port", dest="http_port", type=parse_port, default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)
    parser.add_argument("--msg-server", type=parse_host_port, metavar="HOST:PORT",
                        help="connect to this msg_server directly instead of requesting one from login_server")
    parser.add_argument("--user", required=True, help="user name to log in with")
    parser.add_argument("--password",
                        help="plain password; prompted for when omitted (other users can see command lines)")
    parser.add_argument("--aes-key", metavar="KEY",
                        help="encrypt and decrypt msg_data with this 32-byte key like the original clients "
                             "(the aesKey of the server's conf files); needs the 'cryptography' package. "
                             "Without it, messages are sent as plain UTF-8")
    parser.add_argument("--lang", choices=("auto", "en", "zh"), default="auto",
                        help="screen language; auto follows LC_ALL, LC_MESSAGES and LANG (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_REQUEST_TIMEOUT,
                        help="seconds to wait for a connection or a response (default: %(default)s)")
    # The teamtalk command calls ``handler``; ``func`` is the usual argparse name.
    parser.set_defaults(handler=chat_main, func=chat_main)
    return parser
