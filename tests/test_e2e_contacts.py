"""End-to-end tests of contacts, sessions, presence, profiles, devices and p2p commands.

All four core roles run in this process over loopback with real TCP
links, on both storage backends. Clients are the real
``teamtalk.client.Client``. Waits are bounded, and what must not arrive
is checked after a round trip on the same connection (see
``tests.test_e2e_groups``).
"""

from __future__ import annotations

import logging

import pytest

from teamtalk.client import Client
from teamtalk.pb import IM_BaseDefine as BD
from teamtalk.pb import IM_Buddy, IM_Login, IM_SwitchService
from teamtalk.storage.buddies import get_push_shield
from teamtalk.storage.relations import get_relation_id
from teamtalk.storage.settings import get_device_tokens
from tests.cluster_fixtures import (  # noqa: F401  (fixtures are found by name)
    WAIT,
    cluster,
    cluster2,
    cluster_settings,
    logged_in,
    run_cluster,
    users,
    wait_routed,
)
from tests.test_e2e_groups import (
    GROUP,
    SINGLE,
    buffered_events,
    new_group,
    of_command,
    settled_events,
    wait_logged,
)

PC = BD.CLIENT_TYPE_WINDOWS
ANDROID = BD.CLIENT_TYPE_ANDROID
IOS = BD.CLIENT_TYPE_IOS
ONLINE = BD.USER_STATUS_ONLINE
OFFLINE = BD.USER_STATUS_OFFLINE

msg_server_counts = pytest.mark.parametrize("msg_server_count", [1, 2], ids=["one_msg_server", "two_msg_servers"])


async def remove_session(client: Client, session_id: int, session_type: int) -> IM_Buddy.IMRemoveSessionRsp:
    request = IM_Buddy.IMRemoveSessionReq(user_id=client.user_id, session_type=session_type, session_id=session_id)
    return await client.request(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_REMOVE_SESSION_REQ, request,
                                BD.CID_BUDDY_LIST_REMOVE_SESSION_RES, timeout=WAIT)


async def change_avatar(client: Client, url: str) -> IM_Buddy.IMChangeAvatarRsp:
    request = IM_Buddy.IMChangeAvatarReq(user_id=client.user_id, avatar_url=url)
    return await client.request(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_CHANGE_AVATAR_REQUEST, request,
                                BD.CID_BUDDY_LIST_CHANGE_AVATAR_RESPONSE, timeout=WAIT)


async def change_sign_info(client: Client, text: str) -> IM_Buddy.IMChangeSignInfoRsp:
    request = IM_Buddy.IMChangeSignInfoReq(user_id=client.user_id, sign_info=text)
    return await client.request(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_CHANGE_SIGN_INFO_REQUEST, request,
                                BD.CID_BUDDY_LIST_CHANGE_SIGN_INFO_RESPONSE, timeout=WAIT)


async def set_push_shield(client: Client, status: int) -> IM_Login.IMPushShieldRsp:
    request = IM_Login.IMPushShieldReq(user_id=client.user_id, shield_status=status)
    return await client.request(BD.SID_LOGIN, BD.CID_LOGIN_REQ_PUSH_SHIELD, request,
                                BD.CID_LOGIN_RES_PUSH_SHIELD, timeout=WAIT)


async def query_push_shield(client: Client) -> IM_Login.IMQueryPushShieldRsp:
    request = IM_Login.IMQueryPushShieldReq(user_id=client.user_id)
    return await client.request(BD.SID_LOGIN, BD.CID_LOGIN_REQ_QUERY_PUSH_SHIELD, request,
                                BD.CID_LOGIN_RES_QUERY_PUSH_SHIELD, timeout=WAIT)


async def kick_pc_client(client: Client) -> IM_Login.IMKickPCClientRsp:
    return await client.request(BD.SID_LOGIN, BD.CID_LOGIN_REQ_KICKPCCLIENT,
                                IM_Login.IMKickPCClientReq(user_id=client.user_id),
                                BD.CID_LOGIN_RES_KICKPCCLIENT, timeout=WAIT)


def status_of(response: IM_Buddy.IMUsersStatRsp) -> dict[int, int]:
    return {stat.user_id: stat.status for stat in response.user_stat_list}


def stat_notifies(events) -> list[tuple[int, int]]:
    return [(m.user_stat.user_id, m.user_stat.status) for m in of_command(events, BD.CID_BUDDY_LIST_STATUS_NOTIFY)]


# ---------------------------------------------------------------------------
# 7. Removing a session


@msg_server_counts
async def test_contacts_remove_session_reaches_the_other_device(storage, users, msg_server_count):
    alice_id, bob_id = users["alice"], users["bob"]
    group_id = await new_group(storage, "team", alice_id, [alice_id, bob_id])
    async with run_cluster(storage, cluster_settings(msg_server_count)) as running:
        ports = [server.port for server in running.msg_servers]
        async with logged_in(ports[0], "alice") as pc, \
                logged_in(ports[-1], "alice", client_type=ANDROID) as phone, \
                logged_in(ports[0], "bob") as bob:
            await wait_routed(running, alice_id, 2)
            single = await bob.send_text(alice_id, "hello alice", timeout=WAIT)
            grouped = await bob.send_text(group_id, "hello team", session_type=GROUP, timeout=WAIT)
            for client in (pc, phone):
                await client.expect(BD.CID_MSG_DATA, timeout=WAIT, where=lambda m: m.msg_id == grouped.msg_id
                                    and m.to_session_id == group_id)
            before = await phone.recent_sessions(timeout=WAIT)

            removed_single = await remove_session(pc, bob_id, SINGLE)
            single_notify = await phone.expect(BD.CID_BUDDY_LIST_REMOVE_SESSION_NOTIFY, timeout=WAIT)
            removed_group = await remove_session(phone, group_id, GROUP)
            group_notify = await pc.expect(BD.CID_BUDDY_LIST_REMOVE_SESSION_NOTIFY, timeout=WAIT)
            again = await remove_session(pc, bob_id, SINGLE)
            never = await remove_session(pc, users["dave"], SINGLE)

            after = await phone.recent_sessions(timeout=WAIT)
            unread = await phone.unread_counts(timeout=WAIT)
            pc_events = await settled_events(pc)
            phone_events = await settled_events(phone)

            # The next message brings the session back.
            await bob.send_text(alice_id, "still there?", timeout=WAIT)
            back = await pc.recent_sessions(timeout=WAIT)

    assert {(s.session_id, s.session_type) for s in before.contact_session_list} == {(bob_id, SINGLE),
                                                                                  (group_id, GROUP)}
    assert single.msg_id == 1
    assert removed_single.result_code == 0
    assert (single_notify.user_id, single_notify.session_id, single_notify.session_type) == \
        (alice_id, bob_id, SINGLE)
    assert removed_group.result_code == 0
    assert (group_notify.user_id, group_notify.session_id, group_notify.session_type) == \
        (alice_id, group_id, GROUP)
    assert again.result_code == 1
    assert never.result_code == 1
    assert list(after.contact_session_list) == []
    assert unread.total_cnt == 0
    # The removing device gets the response only, and a failed removal sends no notify.
    assert of_command(pc_events, BD.CID_BUDDY_LIST_REMOVE_SESSION_NOTIFY) == []
    assert of_command(phone_events, BD.CID_BUDDY_LIST_REMOVE_SESSION_NOTIFY) == []
    assert [(s.session_id, s.session_type) for s in back.contact_session_list] == [(bob_id, SINGLE)]


# ---------------------------------------------------------------------------
# 8. Presence


async def test_contacts_presence_across_msg_servers(cluster2, users):
    alice_id, bob_id, carol_id, dave_id = (users[name] for name in ("alice", "bob", "carol", "dave"))
    first, second = (server.port for server in cluster2.msg_servers)
    unknown = 9999
    async with logged_in(second, "bob") as bob, logged_in(first, "carol") as carol:
        await wait_routed(cluster2, bob_id)
        await wait_routed(cluster2, carol_id)
        async with logged_in(first, "alice") as alice:
            own = await alice.expect(BD.CID_BUDDY_LIST_STATUS_NOTIFY, timeout=WAIT,
                                     where=lambda m: m.user_stat.user_id == alice_id)
            seen = [await client.expect(BD.CID_BUDDY_LIST_STATUS_NOTIFY, timeout=WAIT,
                                        where=lambda m: m.user_stat.user_id == alice_id)
                    for client in (bob, carol)]
            await wait_routed(cluster2, alice_id)
            everyone = await bob.users_status([alice_id, bob_id, carol_id, dave_id, unknown], timeout=WAIT)

            # A mobile login and logout are not announced.
            async with logged_in(second, "dave", client_type=ANDROID):
                await wait_routed(cluster2, dave_id)
                dave_online = await alice.users_status([dave_id], timeout=WAIT)
            await wait_routed(cluster2, dave_id, 0)
            logout = await alice.logout(timeout=WAIT)
        gone = [await client.expect(BD.CID_BUDDY_LIST_STATUS_NOTIFY, timeout=WAIT,
                                    where=lambda m: m.user_stat.user_id == alice_id)
                for client in (bob, carol)]
        others_saw = stat_notifies(buffered_events(bob) + buffered_events(carol))
        await wait_routed(cluster2, alice_id, 0)
        after = await bob.users_status([alice_id, dave_id], timeout=WAIT)

    assert own.user_stat.status == ONLINE
    assert [notify.user_stat.status for notify in seen] == [ONLINE, ONLINE]
    assert status_of(everyone) == {alice_id: ONLINE, bob_id: ONLINE, carol_id: ONLINE, dave_id: OFFLINE,
                                   unknown: OFFLINE}
    assert status_of(dave_online) == {dave_id: ONLINE}
    assert logout.result_code == 0
    assert [notify.user_stat.status for notify in gone] == [OFFLINE, OFFLINE]
    assert [stat for stat in others_saw if stat[0] == dave_id] == []
    assert status_of(after) == {alice_id: OFFLINE, dave_id: OFFLINE}


# ---------------------------------------------------------------------------
# 9. Avatar and sign info


async def test_contacts_avatar_and_sign_info_reach_everyone(cluster2, users):
    alice_id, bob_id, carol_id = (users[name] for name in ("alice", "bob", "carol"))
    first, second = (server.port for server in cluster2.msg_servers)
    url = "http://127.0.0.1:8700/g0/000/000/alice.png"
    async with logged_in(first, "alice") as alice, logged_in(second, "bob") as bob, \
            logged_in(first, "carol", client_type=ANDROID) as carol:
        for user_id in (alice_id, bob_id, carol_id):
            await wait_routed(cluster2, user_id)
        avatar = await change_avatar(alice, url)
        avatar_notes = [await client.expect(BD.CID_BUDDY_LIST_AVATAR_CHANGED_NOTIFY, timeout=WAIT)
                        for client in (bob, carol)]
        sign = await change_sign_info(alice, "今天在开会")
        sign_notes = [await client.expect(BD.CID_BUDDY_LIST_SIGN_INFO_CHANGED_NOTIFY, timeout=WAIT)
                      for client in (bob, carol)]

        too_long_sign = await change_sign_info(alice, "长" * 129)
        too_long_avatar = await change_avatar(alice, "http://x/" + "a" * 250)
        # The next notify bob receives is the next valid change.
        last = await change_sign_info(alice, "下班了")
        last_note = await bob.expect(BD.CID_BUDDY_LIST_SIGN_INFO_CHANGED_NOTIFY, timeout=WAIT)
        bob_events = await settled_events(bob)
        [info] = (await bob.users_info([alice_id], timeout=WAIT)).user_info_list

    assert avatar.result_code == 0
    assert [(n.changed_user_id, n.avatar_url) for n in avatar_notes] == [(alice_id, url)] * 2
    assert sign.result_code == 0
    assert [(n.changed_user_id, n.sign_info) for n in sign_notes] == [(alice_id, "今天在开会")] * 2
    assert too_long_sign.result_code == 1
    assert too_long_avatar.result_code == 1
    assert last.result_code == 0
    assert last_note.sign_info == "下班了"
    assert of_command(bob_events, BD.CID_BUDDY_LIST_AVATAR_CHANGED_NOTIFY) == []
    assert info.avatar_url == url
    assert info.sign_info == "下班了"


# ---------------------------------------------------------------------------
# 10. Devices and push settings


async def test_contacts_device_token_and_push_shield(cluster, users, caplog):
    caplog.set_level(logging.INFO)
    storage = cluster.storage
    alice_id = users["alice"]
    port = cluster.msg_servers[0].port
    token = "a1b2c3d4" * 8
    async with logged_in(port, "alice", client_type=IOS) as phone, logged_in(port, "alice") as pc:
        # Clients leave client_type out, and msg_server sets it from the login.
        stored = await phone.request(BD.SID_LOGIN, BD.CID_LOGIN_REQ_DEVICETOKEN,
                                     IM_Login.IMDeviceTokenReq(user_id=alice_id, device_token=token),
                                     BD.CID_LOGIN_RES_DEVICETOKEN, timeout=WAIT)
        tokens = await get_device_tokens(storage.caches.get("token"), [alice_id])
        # A PC has no device token: the request is dropped, as in the original.
        await pc.send_message(BD.SID_LOGIN, BD.CID_LOGIN_REQ_DEVICETOKEN,
                              IM_Login.IMDeviceTokenReq(user_id=alice_id, device_token="pc-token"), seq_num=60010)
        await wait_logged(caplog, "device token from a PC client")
        pc_events = await settled_events(pc)
        tokens_after_pc = await get_device_tokens(storage.caches.get("token"), [alice_id])

        first_query = await query_push_shield(phone)
        on = await set_push_shield(phone, 1)
        query_on = await query_push_shield(pc)
        bad = await set_push_shield(phone, 2)
        query_after_bad = await query_push_shield(phone)
        off = await set_push_shield(pc, 0)
        query_off = await query_push_shield(phone)

    assert stored.user_id == alice_id
    assert [(t.user_id, t.client_type, t.token) for t in tokens] == [(alice_id, IOS, token)]
    assert [e for e in pc_events if e.seq_num == 60010] == []
    assert tokens_after_pc == tokens
    assert (first_query.result_code, first_query.shield_status) == (0, 0)
    assert (on.result_code, on.shield_status) == (0, 1)
    assert (query_on.result_code, query_on.shield_status) == (0, 1)
    assert bad.result_code == 1
    assert (query_after_bad.result_code, query_after_bad.shield_status) == (0, 1)
    assert (off.result_code, off.shield_status) == (0, 0)
    assert (query_off.result_code, query_off.shield_status) == (0, 0)
    assert await get_push_shield(storage.master, alice_id) == 0


@msg_server_counts
async def test_contacts_mobile_kicks_the_pc_client(storage, users, msg_server_count):
    alice_id = users["alice"]
    async with run_cluster(storage, cluster_settings(msg_server_count)) as running:
        ports = [server.port for server in running.msg_servers]

        def pc_status(message) -> bool:
            return message.user_id == alice_id

        async with logged_in(ports[-1], "alice", client_type=ANDROID) as phone:
            await wait_routed(running, alice_id)
            async with logged_in(ports[0], "alice") as pc:
                pc_on = await phone.expect(BD.CID_BUDDY_LIST_PC_LOGIN_STATUS_NOTIFY, timeout=WAIT, where=pc_status)
                await wait_routed(running, alice_id, 2)
                refused = await kick_pc_client(pc)
                await pc.logout(timeout=WAIT)
            pc_off = await phone.expect(BD.CID_BUDDY_LIST_PC_LOGIN_STATUS_NOTIFY, timeout=WAIT, where=pc_status)
            await wait_routed(running, alice_id, 1)

            async with logged_in(ports[0], "alice", client_type=BD.CLIENT_TYPE_MAC) as mac:
                pc_on_again = await phone.expect(BD.CID_BUDDY_LIST_PC_LOGIN_STATUS_NOTIFY, timeout=WAIT,
                                                 where=pc_status)
                await wait_routed(running, alice_id, 2)
                kicked = await kick_pc_client(phone)
                kick = await mac.expect(BD.CID_LOGIN_KICK_USER, timeout=WAIT)
                await mac.wait_closed(timeout=WAIT)
                pc_off_again = await phone.expect(BD.CID_BUDDY_LIST_PC_LOGIN_STATUS_NOTIFY, timeout=WAIT,
                                                  where=pc_status)
            await wait_routed(running, alice_id, 1)
            assert not phone.closed

    assert pc_on.login_stat == ONLINE
    assert refused.result_code != 0
    assert pc_off.login_stat == OFFLINE
    assert pc_on_again.login_stat == ONLINE
    assert kicked.result_code == 0
    assert kicked.user_id == alice_id
    assert kick.kick_reason == BD.KICK_REASON_MOBILE_KICK
    assert mac.kick_reason == BD.KICK_REASON_MOBILE_KICK
    assert pc_off_again.login_stat == OFFLINE


# ---------------------------------------------------------------------------
# 11. p2p commands (typing)


async def test_contacts_p2p_command_is_relayed_and_not_stored(cluster2, users):
    alice_id, bob_id, carol_id = (users[name] for name in ("alice", "bob", "carol"))
    first, second = (server.port for server in cluster2.msg_servers)
    storage = cluster2.storage
    typing = '{"type": "typing"}'
    async with logged_in(first, "alice") as alice, logged_in(second, "bob") as bob:
        await wait_routed(cluster2, alice_id)
        await wait_routed(cluster2, bob_id)
        # msg_server sets the sender id from the login, and drops a command to an offline user.
        await alice.send_message(BD.SID_SWITCH_SERVICE, BD.CID_SWITCH_P2P_CMD, IM_SwitchService.IMP2PCmdMsg(
            from_user_id=carol_id, to_user_id=users["dave"], cmd_msg_data="lost"))
        await alice.send_message(BD.SID_SWITCH_SERVICE, BD.CID_SWITCH_P2P_CMD, IM_SwitchService.IMP2PCmdMsg(
            from_user_id=carol_id, to_user_id=bob_id, cmd_msg_data=typing))
        relayed = await bob.expect(BD.CID_SWITCH_P2P_CMD, timeout=WAIT)
        bob_unread = await bob.unread_counts(timeout=WAIT)
        bob_sessions = await bob.recent_sessions(timeout=WAIT)
        bob_events = await settled_events(bob)
        alice_events = await settled_events(alice)

    assert relayed.from_user_id == alice_id
    assert relayed.to_user_id == bob_id
    assert relayed.cmd_msg_data == typing
    assert of_command(bob_events, BD.CID_SWITCH_P2P_CMD) == []
    assert of_command(alice_events, BD.CID_SWITCH_P2P_CMD) == []
    assert bob_unread.total_cnt == 0
    assert list(bob_sessions.contact_session_list) == []
    assert await get_relation_id(storage.master, alice_id, bob_id) is None
