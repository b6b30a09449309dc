"""The teamtalk command as an operator runs it: separate processes, conf files, signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
import trio

from teamtalk.client import ClientError, fetch_msg_server, open_client
from teamtalk.pb import IM_BaseDefine as BD

HOST = "127.0.0.1"
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def teamtalk(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "teamtalk", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


class Process:
    """A teamtalk process with its output in a file, ended by SIGTERM or SIGINT."""

    def __init__(self, name: str, args: list[str], log_dir: Path, env: dict | None = None) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.log = open(self.log_path, "w")
        self.popen = subprocess.Popen([sys.executable, "-m", "teamtalk", *args], stdout=self.log,
                                      stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signum)
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(f"{self.name} did not stop within {timeout} s:\n{self.output()[-3000:]}")
        finally:
            self.log.close()
        return code


async def wait_for_msg_server(http_port: int) -> dict:
    """Poll login_server until a msg_server is registered (bounded)."""
    with trio.fail_after(START_TIMEOUT):
        while True:
            try:
                answer = await fetch_msg_server(HOST, http_port, timeout=2)
            except (ClientError, OSError):
                await trio.sleep(0.2)
                continue
            if answer.get("code") == 0:
                return answer
            await trio.sleep(0.2)


async def chat_round_trip(http_port: int) -> None:
    """alice sends to bob, who is online; then to carol, who reads it after logging in."""
    async with open_client(HOST, http_port, "alice", "alice-pw") as alice, \
            open_client(HOST, http_port, "bob", "bob-pw") as bob:
        ack = await alice.send_text(bob.user_id, "hello bob")
        message = await bob.expect(BD.CID_MSG_DATA, timeout=10)
        assert message.msg_id == ack.msg_id
        assert message.msg_data == b"hello bob"
        # Users were added in the order alice, bob, carol on an empty database.
        carol = bob.user_id + 1
        await alice.send_text(carol, "for later")
    async with open_client(HOST, http_port, "carol", "carol-pw") as carol_client:
        unread = await carol_client.unread_counts()
        assert unread.total_cnt == 1
        assert unread.unreadinfo_list[0].latest_msg_data == b"for later"


def add_users(storage_args: list[str]) -> None:
    for name in ("alice", "bob", "carol"):
        result = teamtalk("user", "add", name, "--password", f"{name}-pw", "--nick", name, *storage_args)
        assert result.returncode == 0, result.stderr


async def test_serve_process_chats_and_stops_cleanly(tmp_path):
    data_dir = tmp_path / "data"
    add_users(["--data-dir", str(data_dir)])
    ports = {name: free_port() for name in ("http", "msg", "login", "login-msg", "route", "db-proxy")}
    process = Process("serve", ["serve", "--data-dir", str(data_dir),
                                "--http-port", str(ports["http"]), "--msg-port", str(ports["msg"]),
                                "--login-port", str(ports["login"]), "--login-msg-port", str(ports["login-msg"]),
                                "--route-port", str(ports["route"]), "--db-proxy-port", str(ports["db-proxy"])],
                      tmp_path)
    try:
        answer = await wait_for_msg_server(ports["http"])
        assert answer["port"] == str(ports["msg"])
        await chat_round_trip(ports["http"])
    finally:
        code = process.stop(signal.SIGINT)
    output = process.output()
    assert code == 0, output[-3000:]
    assert "Cython PDU framing" in output
    assert "stopped" in output
    assert (data_dir / "teamtalk.db").exists()


async def test_serve_reports_pure_python_framing(tmp_path):
    ports = [str(free_port()) for _ in range(6)]
    process = Process("serve", ["serve", "--data-dir", str(tmp_path / "data"), "--http-port", ports[0],
                                "--msg-port", ports[1], "--login-port", ports[2], "--login-msg-port", ports[3],
                                "--route-port", ports[4], "--db-proxy-port", ports[5]],
                      tmp_path, env={"TEAMTALK_PURE_PYTHON_FRAMING": "1"})
    try:
        await wait_for_msg_server(int(ports[0]))
    finally:
        code = process.stop()
    output = process.output()
    assert code == 0
    assert output.count("pure-Python PDU framing") == 1


def write_conf(path: Path, lines: dict[str, object]) -> Path:
    path.write_text("".join(f"{key}={value}\n" for key, value in lines.items()))
    return path


def role_confs(tmp_path: Path, mysql_url: str, redis_server) -> tuple[dict[str, Path], int]:
    """Write the four conf files of the original layout; return them and login's HTTP port."""
    url = urllib.parse.urlsplit(mysql_url)
    port = {name: free_port() for name in ("client", "http", "login", "route", "db", "msg")}
    db_proxy = {"ListenIP": HOST, "ListenPort": port["db"], "DBInstances": "teamtalk_master,teamtalk_slave"}
    for instance in ("teamtalk_master", "teamtalk_slave"):
        db_proxy.update({f"{instance}_host": url.hostname, f"{instance}_port": url.port,
                         f"{instance}_dbname": url.path.lstrip("/"),
                         f"{instance}_username": urllib.parse.unquote(url.username or "root"),
                         f"{instance}_password": urllib.parse.unquote(url.password or ""),
                         f"{instance}_maxconncnt": 4})
    caches = ("unread", "group_set", "token", "sync", "group_member")
    db_proxy["CacheInstances"] = ",".join(caches)
    for cache in caches:
        # Every instance on the test's own Redis database: the key names do not collide.
        db_proxy.update({f"{cache}_host": redis_server.host, f"{cache}_port": redis_server.port,
                         f"{cache}_db": redis_server.db, f"{cache}_maxconncnt": 4})
        if redis_server.password:
            db_proxy[f"{cache}_password"] = redis_server.password
    confs = {
        "db-proxy-server": write_conf(tmp_path / "dbproxyserver.conf", db_proxy),
        "route-server": write_conf(tmp_path / "routeserver.conf",
                                   {"ListenIP": HOST, "ListenMsgPort": port["route"]}),
        "login-server": write_conf(tmp_path / "loginserver.conf", {
            "ClientListenIP": HOST, "ClientPort": port["client"], "HttpListenIP": HOST,
            "HttpPort": port["http"], "MsgServerListenIP": HOST, "MsgServerPort": port["login"],
            "msfs": "http://127.0.0.1:8700/", "discovery": ""}),
        "msg-server": write_conf(tmp_path / "msgserver.conf", {
            "ListenIP": HOST, "ListenPort": port["msg"], "IpAddr1": HOST, "IpAddr2": HOST,
            "MaxConnCnt": 1000, "DBServerIP1": HOST, "DBServerPort1": port["db"],
            "LoginServerIP1": HOST, "LoginServerPort1": port["login"],
            "RouteServerIP1": HOST, "RouteServerPort1": port["route"]}),
    }
    return confs, port["http"]


async def test_four_role_processes_on_mysql_and_redis(tmp_path, mysql_url, redis_server):
    confs, http_port = role_confs(tmp_path, mysql_url, redis_server)
    storage_args = ["-c", str(confs["db-proxy-server"])]
    assert teamtalk("init-db", *storage_args).returncode == 0
    assert teamtalk("init-db", *storage_args).returncode == 0
    add_users(storage_args)

    processes = []
    try:
        for role in ("db-proxy-server", "route-server", "login-server", "msg-server"):
            processes.append(Process(role, [role, "-c", str(confs[role])], tmp_path))
        await wait_for_msg_server(http_port)
        await chat_round_trip(http_port)
    finally:
        codes = {process.name: process.stop() for process in reversed(processes)}
    for process in processes:
        assert codes[process.name] == 0, process.output()[-3000:]
        assert "stopped" in process.output()


async def test_msg_server_alone_refuses_logins_until_peers_come(tmp_path, mysql_url, redis_server):
    confs, http_port = role_confs(tmp_path, mysql_url, redis_server)
    assert teamtalk("init-db", "-c", str(confs["db-proxy-server"])).returncode == 0
    add_users(["-c", str(confs["db-proxy-server"])])
    msg_port = int(dict(line.split("=", 1) for line in confs["msg-server"].read_text().split())["ListenPort"])

    msg_server = Process("msg-server", ["msg-server", "-c", str(confs["msg-server"])], tmp_path)
    others = []
    try:
        from teamtalk.client import Client, LoginRefused

        with trio.fail_after(START_TIMEOUT):
            while True:
                try:
                    async with Client.connect(HOST, msg_port) as client:
                        with pytest.raises(LoginRefused) as refused:
                            await client.login("alice", "alice-pw")
                    break
                except ClientError as exc:
                    if isinstance(exc, LoginRefused):
                        raise
                    await trio.sleep(0.2)
        assert refused.value.result_code == BD.REFUSE_REASON_NO_DB_SERVER

        for role in ("db-proxy-server", "route-server", "login-server"):
            others.append(Process(role, [role, "-c", str(confs[role])], tmp_path))
        await wait_for_msg_server(http_port)
        # The links came up by themselves, with backoff.
        with trio.fail_after(START_TIMEOUT):
            while True:
                try:
                    async with open_client(HOST, http_port, "alice", "alice-pw") as alice:
                        assert alice.user_id
                    break
                except ClientError:
                    await trio.sleep(0.5)
    finally:
        for process in reversed(others):
            process.stop()
        assert msg_server.stop() == 0


def test_db_proxy_unreachable_database_exits_nonzero(tmp_path, closed_port):
    conf = write_conf(tmp_path / "dbproxyserver.conf", {
        "ListenIP": HOST, "ListenPort": free_port(), "DBInstances": "teamtalk_master",
        "teamtalk_master_host": HOST, "teamtalk_master_port": closed_port, "teamtalk_master_dbname": "teamtalk",
        "teamtalk_master_username": "root", "teamtalk_master_password": "", "teamtalk_master_maxconncnt": 2})
    result = teamtalk("db-proxy-server", "-c", str(conf))
    assert result.returncode == 1
    assert f"{HOST}:{closed_port}" in result.stderr


def test_role_conf_with_misspelt_key_exits_2(tmp_path):
    conf = write_conf(tmp_path / "routeserver.conf", {"ListenIP": HOST, "ListenPrt": 8200})
    result = teamtalk("route-server", "-c", str(conf))
    assert result.returncode == 2
    assert "ListenPrt" in result.stderr
    assert "routeserver.conf" in result.stderr


def test_role_conf_with_bad_port_exits_2(tmp_path):
    conf = write_conf(tmp_path / "msgserver.conf", {"ListenIP": HOST, "ListenPort": "eighty"})
    result = teamtalk("msg-server", "-c", str(conf))
    assert result.returncode == 2
    assert "eighty" in result.stderr


def test_role_missing_conf_file_exits_2(tmp_path):
    result = teamtalk("login-server", "-c", str(tmp_path / "nothing.conf"))
    assert result.returncode == 2
    assert "nothing.conf" in result.stderr


def test_role_port_in_use_exits_1(tmp_path):
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        conf = write_conf(tmp_path / "routeserver.conf", {"ListenIP": HOST, "ListenMsgPort": port})
        result = teamtalk("route-server", "-c", str(conf))
    assert result.returncode == 1
    assert f"{HOST}:{port}" in result.stderr


def test_serve_port_in_use_one_line_error(tmp_path):
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        ports = [str(free_port()) for _ in range(5)]
        result = teamtalk("serve", "--data-dir", str(tmp_path / "data"), "--http-port", ports[0],
                          "--msg-port", ports[1], "--login-port", ports[2], "--login-msg-port", ports[3],
                          "--route-port", ports[4], "--db-proxy-port", str(port))
    assert result.returncode == 1
    assert f"{HOST}:{port}" in result.stderr
    assert "Address already in use" in result.stderr
    assert "Traceback" not in result.stderr
