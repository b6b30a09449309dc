import json

import trio

from teamtalk.login_server.server import LoginServer
from teamtalk.pb import IM_BaseDefine as BD
from teamtalk.pb import IM_Login, IM_Server
from tests.raw_peer import RawPeer

HOST = "127.0.0.1"


async def start_login_server(nursery) -> LoginServer:
    server = LoginServer(client_host=HOST, client_port=0, http_host=HOST, http_port=0,
                         msg_server_host=HOST, msg_server_port=0, msfs_url="http://127.0.0.1:8700/")
    await nursery.start(server.run)
    return server


async def http_get(port: int, path: str = "/msg_server", raw: bytes | None = None) -> tuple[int, dict | None]:
    stream = await trio.open_tcp_stream(HOST, port)
    request = raw if raw is not None else f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    await stream.send_all(request)
    data = b""
    with trio.fail_after(5):
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
    await stream.aclose()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    return status, json.loads(body) if body else None


async def register(server: LoginServer, port: int, cur: int = 0, max_conn: int = 100, ip: str = "10.0.0.1"):
    peer = await RawPeer.connect(HOST, server.msg_server_listener.port)
    info = IM_Server.IMMsgServInfo(ip1=ip, ip2=ip + "0", port=port, max_conn_cnt=max_conn,
                                   cur_conn_cnt=cur, host_name=f"host-{port}")
    await peer.send(BD.SID_OTHER, BD.CID_OTHER_MSG_SERV_INFO, info)
    await wait_for(lambda: any(e.port == port for e in server.registry.entries.values()))
    return peer


async def wait_for(condition, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


async def test_http_msg_server_none_registered(nursery):
    server = await start_login_server(nursery)
    status, body = await http_get(server.http_port)
    assert status == 200
    assert body["code"] == 1
    assert body["msg"]


async def test_http_msg_server_answers_registered(nursery):
    server = await start_login_server(nursery)
    peer = await register(server, 8000)
    status, body = await http_get(server.http_port)
    assert status == 200
    assert body["code"] == 0
    assert body["priorIP"] == "10.0.0.1"
    assert body["backupIP"] == "10.0.0.10"
    assert body["port"] == "8000"
    assert body["msfsPrior"] == "http://127.0.0.1:8700/"
    assert "discovery" in body
    await peer.aclose()


async def test_http_msg_server_least_loaded(nursery):
    server = await start_login_server(nursery)
    busy = await register(server, 8000, cur=5)
    idle = await register(server, 8001, cur=1)
    _, body = await http_get(server.http_port)
    assert body["port"] == "8001"

    # Five logins on the idle one make the other the least loaded.
    for user_id in range(5):
        await idle.send(BD.SID_OTHER, BD.CID_OTHER_USER_CNT_UPDATE,
                        IM_Server.IMUserCntUpdate(user_action=1, user_id=user_id))
    await wait_for(lambda: server.registry.total_users == 11)
    _, body = await http_get(server.http_port)
    assert body["port"] == "8000"
    await busy.aclose()
    await idle.aclose()


async def test_http_msg_server_all_full(nursery):
    server = await start_login_server(nursery)
    peer = await register(server, 8000, cur=10, max_conn=10)
    _, body = await http_get(server.http_port)
    assert body["code"] == 2
    await peer.aclose()


async def test_msg_server_disconnect_leaves_registry(nursery):
    server = await start_login_server(nursery)
    peer = await register(server, 8000)
    await peer.aclose()
    await wait_for(lambda: not server.registry.entries)
    _, body = await http_get(server.http_port)
    assert body["code"] == 1


async def test_http_unknown_path_404(nursery):
    server = await start_login_server(nursery)
    status, body = await http_get(server.http_port, "/nothing")
    assert status == 404


async def test_http_garbage_request_400(nursery):
    server = await start_login_server(nursery)
    status, _ = await http_get(server.http_port, raw=b"hello there\r\n\r\n")
    assert status == 400


async def test_http_oversized_request_400(nursery):
    server = await start_login_server(nursery)
    status, _ = await http_get(server.http_port, raw=b"GET /msg_server HTTP/1.1\r\nX: " + b"a" * 20000)
    assert status == 400


async def test_tcp_client_port_answers(nursery):
    server = await start_login_server(nursery)
    msg_peer = await register(server, 8000)
    client = await RawPeer.connect(HOST, server.client_listener.port)
    await client.send(BD.SID_LOGIN, BD.CID_LOGIN_REQ_MSGSERVER, IM_Login.IMMsgServReq(), seq_num=7)
    pdu, response = await client.expect(BD.CID_LOGIN_RES_MSGSERVER, IM_Login.IMMsgServRsp)
    assert pdu.seq_num == 7
    assert response.result_code == BD.REFUSE_REASON_NONE
    assert response.prior_ip == "10.0.0.1"
    assert response.port == 8000
    await client.expect_closed()
    await msg_peer.aclose()


async def test_tcp_client_port_no_server(nursery):
    server = await start_login_server(nursery)
    client = await RawPeer.connect(HOST, server.client_listener.port)
    await client.send(BD.SID_LOGIN, BD.CID_LOGIN_REQ_MSGSERVER, IM_Login.IMMsgServReq())
    _, response = await client.expect(BD.CID_LOGIN_RES_MSGSERVER, IM_Login.IMMsgServRsp)
    assert response.result_code == BD.REFUSE_REASON_NO_MSG_SERVER


async def test_bad_pdus_from_msg_server(nursery):
    server = await start_login_server(nursery)
    peer = await register(server, 8000)
    # An unknown command and a body that does not parse are dropped; the link lives.
    await peer.send(BD.SID_OTHER, 0x07FF)
    await peer.send_raw(b"\x00\x00\x00\x14\x00\x01\x00\x00\x00\x07\x00\x0b\x00\x00\x00\x00\xff\xff\xff\xff")
    await peer.send(BD.SID_OTHER, BD.CID_OTHER_USER_CNT_UPDATE, IM_Server.IMUserCntUpdate(user_action=1, user_id=1))
    await wait_for(lambda: server.registry.total_users == 1)
    # A length under the header size closes the link and unregisters it.
    await peer.send_raw(b"\x00\x00\x00\x0f" + b"\x00" * 12)
    await peer.expect_closed()
    await wait_for(lambda: not server.registry.entries)
