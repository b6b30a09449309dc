"""Wire-format checks of the generated protobuf modules.

Every body below is written out by hand, tag by tag, as a C++ TeamTalk peer
would put it on the wire. A tag is the varint ``(field_number << 3) |
wire_type``, with wire type 0 for varints and 2 for length-delimited fields.
So field 20 (attach_data, length-delimited) has the two-byte tag ``a2 01``.
Decoding these bytes with our modules shows that our ``proto/`` files use
the upstream field numbers, types and labels.
"""

import pytest
from google.protobuf import unknown_fields
from google.protobuf.message import DecodeError, EncodeError

from teamtalk.pb import (
    IM_BaseDefine,
    IM_Buddy,
    IM_File,
    IM_Group,
    IM_Login,
    IM_Message,
    IM_Other,
    IM_Server,
    IM_SwitchService,
)

# msg_server's usual attach_data: type 1 (handle only), handle 7, service_type 0,
# each a big-endian uint32.
ATTACH_HANDLE_7 = b"\x00\x00\x00\x01" b"\x00\x00\x00\x07" b"\x00\x00\x00\x00"

NICK_UTF8 = "张三".encode("utf-8")  # 6 bytes

# A complete IM.BaseDefine.UserInfo body, reused inside other messages.
USER_INFO_BODY = (
    b"\x08\xac\x02"  # 1 user_id = 300 (two-byte varint)
    b"\x10\x01"  # 2 user_gender = 1
    b"\x1a\x03bob"  # 3 user_nick_name
    b"\x22\x00"  # 4 avatar_url = ""
    b"\x28\x07"  # 5 department_id = 7
    b"\x32\x07b@x.com"  # 6 email
    b"\x3a\x06" + NICK_UTF8  # 7 user_real_name
    + b"\x42\x03110"  # 8 user_tel
    b"\x4a\x03bob"  # 9 user_domain
    b"\x50\x00"  # 10 status = 0
    b"\x5a\x02hi"  # 11 sign_info
)


def parse(message_class, data):
    message = message_class()
    message.ParseFromString(data)
    return message


def unknown_field_numbers(message):
    return [field.field_number for field in unknown_fields.UnknownFieldSet(message)]


# --- IM.BaseDefine: enums -----------------------------------------------------


def test_service_id_values():
    assert IM_BaseDefine.SID_LOGIN == 0x0001
    assert IM_BaseDefine.SID_BUDDY_LIST == 0x0002
    assert IM_BaseDefine.SID_MSG == 0x0003
    assert IM_BaseDefine.SID_GROUP == 0x0004
    assert IM_BaseDefine.SID_FILE == 0x0005
    assert IM_BaseDefine.SID_SWITCH_SERVICE == 0x0006
    assert IM_BaseDefine.SID_OTHER == 0x0007
    assert IM_BaseDefine.SID_INTERNAL == 0x0008


def test_command_id_values():
    assert IM_BaseDefine.CID_LOGIN_REQ_USERLOGIN == 0x0103
    assert IM_BaseDefine.CID_LOGIN_RES_USERLOGIN == 0x0104
    assert IM_BaseDefine.CID_LOGIN_KICK_USER == 0x0107
    assert IM_BaseDefine.CID_BUDDY_LIST_RECENT_CONTACT_SESSION_REQUEST == 0x0201
    assert IM_BaseDefine.CID_BUDDY_LIST_SIGN_INFO_CHANGED_NOTIFY == 0x0215
    assert IM_BaseDefine.CID_MSG_DATA == 0x0301
    assert IM_BaseDefine.CID_MSG_DATA_ACK == 0x0302
    assert IM_BaseDefine.CID_MSG_GET_BY_MSG_ID_RES == 0x030E
    assert IM_BaseDefine.CID_GROUP_CHANGE_MEMBER_NOTIFY == 0x040B
    assert IM_BaseDefine.CID_FILE_DEL_OFFLINE_REQ == 0x050C
    assert IM_BaseDefine.CID_SWITCH_P2P_CMD == 0x0601
    assert IM_BaseDefine.CID_OTHER_HEARTBEAT == 0x0701
    assert IM_BaseDefine.CID_OTHER_VALIDATE_REQ == 0x0703
    assert IM_BaseDefine.CID_OTHER_MSG_SERV_INFO == 0x0709
    assert IM_BaseDefine.CID_OTHER_SERVER_KICK_USER == 0x070D


def test_command_id_file_server_range():
    assert IM_BaseDefine.CID_OTHER_FILE_TRANSFER_REQ == 0x0731
    assert IM_BaseDefine.CID_OTHER_FILE_TRANSFER_RSP == 0x0732
    assert IM_BaseDefine.CID_OTHER_FILE_SERVER_IP_REQ == 0x0733
    assert IM_BaseDefine.CID_OTHER_FILE_SERVER_IP_RSP == 0x0734
    other_ids = IM_BaseDefine.OtherCmdID.values()
    for stale_id in (0x0715, 0x0716, 0x0717, 0x0718):
        assert stale_id not in other_ids


def test_command_id_gap_0x070c_undefined():
    with pytest.raises(ValueError):
        IM_BaseDefine.OtherCmdID.Name(0x070C)


def test_result_type_values():
    assert IM_BaseDefine.REFUSE_REASON_NONE == 0
    assert IM_BaseDefine.REFUSE_REASON_NO_MSG_SERVER == 1
    assert IM_BaseDefine.REFUSE_REASON_MSG_SERVER_FULL == 2
    assert IM_BaseDefine.REFUSE_REASON_NO_DB_SERVER == 3
    assert IM_BaseDefine.REFUSE_REASON_NO_LOGIN_SERVER == 4
    assert IM_BaseDefine.REFUSE_REASON_NO_ROUTE_SERVER == 5
    assert IM_BaseDefine.REFUSE_REASON_DB_VALIDATE_FAILED == 6
    assert IM_BaseDefine.REFUSE_REASON_VERSION_TOO_OLD == 7


def test_client_type_values():
    assert IM_BaseDefine.CLIENT_TYPE_WINDOWS == 0x01
    assert IM_BaseDefine.CLIENT_TYPE_MAC == 0x02
    assert IM_BaseDefine.CLIENT_TYPE_IOS == 0x11
    assert IM_BaseDefine.CLIENT_TYPE_ANDROID == 0x12


def test_session_and_msg_type_values():
    assert IM_BaseDefine.SESSION_TYPE_SINGLE == 1
    assert IM_BaseDefine.SESSION_TYPE_GROUP == 2
    assert IM_BaseDefine.MSG_TYPE_SINGLE_TEXT == 0x01
    assert IM_BaseDefine.MSG_TYPE_SINGLE_AUDIO == 0x02
    assert IM_BaseDefine.MSG_TYPE_GROUP_TEXT == 0x11
    assert IM_BaseDefine.MSG_TYPE_GROUP_AUDIO == 0x12


def test_status_and_kick_values():
    assert IM_BaseDefine.USER_STATUS_ONLINE == 1
    assert IM_BaseDefine.USER_STATUS_OFFLINE == 2
    assert IM_BaseDefine.USER_STATUS_LEAVE == 3
    assert IM_BaseDefine.KICK_REASON_DUPLICATE_USER == 1
    assert IM_BaseDefine.KICK_REASON_MOBILE_KICK == 2
    assert IM_BaseDefine.GROUP_TYPE_NORMAL == 1
    assert IM_BaseDefine.GROUP_TYPE_TMP == 2
    assert IM_BaseDefine.FILE_TYPE_ONLINE == 1
    assert IM_BaseDefine.FILE_TYPE_OFFLINE == 2


# --- IM.BaseDefine: records ---------------------------------------------------


def test_user_info_decodes_all_fields():
    info = parse(IM_BaseDefine.UserInfo, USER_INFO_BODY)
    assert info.user_id == 300
    assert info.user_gender == 1
    assert info.user_nick_name == "bob"
    assert info.avatar_url == ""
    assert info.HasField("avatar_url")
    assert info.department_id == 7
    assert info.email == "b@x.com"
    assert info.user_real_name == "张三"
    assert info.user_tel == "110"
    assert info.user_domain == "bob"
    assert info.status == 0
    assert info.sign_info == "hi"
    assert info.IsInitialized()


def test_user_info_missing_status():
    body = USER_INFO_BODY.replace(b"\x50\x00", b"")
    info = parse(IM_BaseDefine.UserInfo, body)
    assert not info.IsInitialized()
    assert info.FindInitializationErrors() == ["status"]


def test_user_info_without_sign_info():
    body = USER_INFO_BODY.replace(b"\x5a\x02hi", b"")
    info = parse(IM_BaseDefine.UserInfo, body)
    assert info.IsInitialized()
    assert not info.HasField("sign_info")


def test_contact_session_info_decodes_enums():
    body = (
        b"\x08\x05"  # 1 session_id = 5
        b"\x10\x02"  # 2 session_type = SESSION_TYPE_GROUP
        b"\x18\x01"  # 3 session_status = SESSION_STATUS_DELETE
        b"\x20\x80\xe2\xcf\xaa\x06"  # 4 updated_time = 1700000000
        b"\x28\x09"  # 5 latest_msg_id = 9
        b"\x32\x03\x00\xff\x10"  # 6 latest_msg_data, raw bytes
        b"\x38\x11"  # 7 latest_msg_type = MSG_TYPE_GROUP_TEXT
        b"\x40\x03"  # 8 latest_msg_from_user_id = 3
    )
    info = parse(IM_BaseDefine.ContactSessionInfo, body)
    assert info.session_id == 5
    assert info.session_type == IM_BaseDefine.SESSION_TYPE_GROUP
    assert info.session_status == IM_BaseDefine.SESSION_STATUS_DELETE
    assert info.updated_time == 1700000000
    assert info.latest_msg_id == 9
    assert info.latest_msg_data == b"\x00\xff\x10"
    assert info.latest_msg_type == IM_BaseDefine.MSG_TYPE_GROUP_TEXT
    assert info.latest_msg_from_user_id == 3
    assert info.IsInitialized()


def test_group_info_packed_and_unpacked():
    head = (
        b"\x08\x0a"  # 1 group_id = 10
        b"\x10\x02"  # 2 version = 2
        b"\x1a\x02g1"  # 3 group_name
        b"\x22\x00"  # 4 group_avatar
        b"\x28\x01"  # 5 group_creator_id = 1
        b"\x30\x02"  # 6 group_type = GROUP_TYPE_TMP
        b"\x38\x00"  # 7 shield_status = 0
    )
    unpacked = parse(IM_BaseDefine.GroupInfo, head + b"\x40\x01\x40\x02")
    packed = parse(IM_BaseDefine.GroupInfo, head + b"\x42\x02\x01\x02")
    assert list(unpacked.group_member_list) == [1, 2]
    assert list(packed.group_member_list) == [1, 2]
    assert unpacked.group_type == IM_BaseDefine.GROUP_TYPE_TMP


def test_group_info_serializes_unpacked():
    # proto2 repeated scalars are unpacked unless marked, as in the upstream files.
    info = IM_BaseDefine.GroupInfo(group_member_list=[1, 2])
    assert info.SerializePartialToString() == b"\x40\x01\x40\x02"


def test_user_stat_uint32_overflow():
    # A varint of 2**32 for a uint32 field keeps its low 32 bits, as C++ does.
    stat = parse(IM_BaseDefine.UserStat, b"\x08\x80\x80\x80\x80\x10\x10\x01")
    assert stat.user_id == 0
    assert stat.status == IM_BaseDefine.USER_STATUS_ONLINE


# --- IM.Login -----------------------------------------------------------------


def test_login_req_decodes():
    body = (
        b"\x0a\x05alice"  # 1 user_name
        b"\x12\x20e10adc3949ba59abbe56e057f20f883e"  # 2 password, 32 hex chars
        b"\x18\x01"  # 3 online_status = USER_STATUS_ONLINE
        b"\x20\x12"  # 4 client_type = CLIENT_TYPE_ANDROID
        b"\x2a\x052.0.1"  # 5 client_version
    )
    req = parse(IM_Login.IMLoginReq, body)
    assert req.user_name == "alice"
    assert req.password == "e10adc3949ba59abbe56e057f20f883e"
    assert req.online_status == IM_BaseDefine.USER_STATUS_ONLINE
    assert req.client_type == IM_BaseDefine.CLIENT_TYPE_ANDROID
    assert req.client_version == "2.0.1"
    assert req.IsInitialized()


def test_login_req_missing_client_type():
    body = b"\x0a\x05alice\x12\x01x\x18\x01"
    req = parse(IM_Login.IMLoginReq, body)
    assert not req.IsInitialized()
    assert req.FindInitializationErrors() == ["client_type"]


def test_login_req_serialize_missing_fields():
    req = IM_Login.IMLoginReq(user_name="alice")
    with pytest.raises(EncodeError):
        req.SerializeToString()


def test_login_req_wrong_wire_type():
    # The parser keeps a user_name sent as a varint as an unknown field.
    req = parse(IM_Login.IMLoginReq, b"\x08\x05")
    assert not req.HasField("user_name")
    assert unknown_field_numbers(req) == [1]


def test_login_res_decodes_nested_user_info():
    body = (
        b"\x08\x80\xe2\xcf\xaa\x06"  # 1 server_time = 1700000000
        b"\x10\x00"  # 2 result_code = REFUSE_REASON_NONE
        b"\x1a\x00"  # 3 result_string = ""
        b"\x20\x01"  # 4 online_status = USER_STATUS_ONLINE
        + bytes([0x2A, len(USER_INFO_BODY)])  # 5 user_info, length-delimited
        + USER_INFO_BODY
    )
    res = parse(IM_Login.IMLoginRes, body)
    assert res.server_time == 1700000000
    assert res.result_code == IM_BaseDefine.REFUSE_REASON_NONE
    assert res.online_status == IM_BaseDefine.USER_STATUS_ONLINE
    assert res.user_info.user_id == 300
    assert res.user_info.user_real_name == "张三"
    assert res.IsInitialized()


def test_login_res_refused_decodes():
    reason = "用户名或密码错误".encode("utf-8")
    body = (
        b"\x08\x01"  # 1 server_time = 1
        b"\x10\x06"  # 2 result_code = REFUSE_REASON_DB_VALIDATE_FAILED
        + bytes([0x1A, len(reason)])  # 3 result_string
        + reason
    )
    res = parse(IM_Login.IMLoginRes, body)
    assert res.result_code == IM_BaseDefine.REFUSE_REASON_DB_VALIDATE_FAILED
    assert res.result_string == "用户名或密码错误"
    assert not res.HasField("user_info")
    assert res.IsInitialized()


def test_login_res_incomplete_user_info():
    body = b"\x08\x01\x10\x00\x2a\x02\x08\x01"  # user_info holds only user_id
    res = parse(IM_Login.IMLoginRes, body)
    assert not res.IsInitialized()
    assert "user_info.status" in res.FindInitializationErrors()


def test_msg_serv_rsp_decodes():
    body = (
        b"\x08\x00"  # 1 result_code = REFUSE_REASON_NONE
        b"\x12\x0910.0.0.10"  # 2 prior_ip
        b"\x1a\x0910.0.0.11"  # 3 backip_ip
        b"\x20\xc0\x3e"  # 4 port = 8000
    )
    rsp = parse(IM_Login.IMMsgServRsp, body)
    assert rsp.result_code == IM_BaseDefine.REFUSE_REASON_NONE
    assert rsp.prior_ip == "10.0.0.10"
    assert rsp.backip_ip == "10.0.0.11"
    assert rsp.port == 8000


def test_device_token_req_attach_data():
    body = (
        b"\x08\x2a"  # 1 user_id = 42
        b"\x12\x03tok"  # 2 device_token
        b"\x18\x11"  # 3 client_type = CLIENT_TYPE_IOS
        b"\xa2\x01\x0c" + ATTACH_HANDLE_7  # 20 attach_data, 12 bytes
    )
    req = parse(IM_Login.IMDeviceTokenReq, body)
    assert req.user_id == 42
    assert req.device_token == "tok"
    assert req.client_type == IM_BaseDefine.CLIENT_TYPE_IOS
    assert req.attach_data == ATTACH_HANDLE_7


def test_msg_serv_req_empty_body():
    req = parse(IM_Login.IMMsgServReq, b"")
    assert req.IsInitialized()
    assert req.SerializeToString() == b""


# --- IM.Buddy -----------------------------------------------------------------


def test_users_info_req_decodes_id_list():
    body = (
        b"\x08\x01"  # 1 user_id = 1
        b"\x10\x02\x10\x03"  # 2 user_id_list = [2, 3]
        b"\xa2\x01\x0c" + ATTACH_HANDLE_7  # 20 attach_data
    )
    req = parse(IM_Buddy.IMUsersInfoReq, body)
    assert req.user_id == 1
    assert list(req.user_id_list) == [2, 3]
    assert req.attach_data == ATTACH_HANDLE_7


def test_users_stat_rsp_decodes_stat_list():
    body = (
        b"\x08\x01"  # 1 user_id = 1
        b"\x12\x04\x08\x05\x10\x01"  # 2 user_stat_list[0]: user 5 online
        b"\x12\x04\x08\x06\x10\x02"  # 2 user_stat_list[1]: user 6 offline
    )
    rsp = parse(IM_Buddy.IMUsersStatRsp, body)
    assert [stat.user_id for stat in rsp.user_stat_list] == [5, 6]
    assert rsp.user_stat_list[0].status == IM_BaseDefine.USER_STATUS_ONLINE
    assert rsp.user_stat_list[1].status == IM_BaseDefine.USER_STATUS_OFFLINE
    assert not rsp.HasField("attach_data")


def test_remove_session_rsp_field_order():
    body = (
        b"\x08\x01"  # 1 user_id = 1
        b"\x10\x00"  # 2 result_code = 0
        b"\x18\x01"  # 3 session_type = SESSION_TYPE_SINGLE
        b"\x20\x09"  # 4 session_id = 9
    )
    rsp = parse(IM_Buddy.IMRemoveSessionRsp, body)
    assert rsp.result_code == 0
    assert rsp.session_type == IM_BaseDefine.SESSION_TYPE_SINGLE
    assert rsp.session_id == 9
    assert rsp.IsInitialized()


def test_user_stat_notify_missing_stat():
    notify = parse(IM_Buddy.IMUserStatNotify, b"")
    assert not notify.IsInitialized()


def test_recent_contact_session_rsp_truncated():
    body = b"\x08\x01\x12\x10\x08\x05"  # the session entry declares 16 bytes but has 2
    with pytest.raises(DecodeError):
        parse(IM_Buddy.IMRecentContactSessionRsp, body)


# --- IM.Message ---------------------------------------------------------------


IM_MSG_DATA_BODY = (
    b"\x08\x01"  # 1 from_user_id = 1
    b"\x10\x02"  # 2 to_session_id = 2
    b"\x18\x00"  # 3 msg_id = 0 (db_proxy assigns it)
    b"\x20\x80\xe2\xcf\xaa\x06"  # 4 create_time = 1700000000
    b"\x28\x01"  # 5 msg_type = MSG_TYPE_SINGLE_TEXT
    b"\x32\x05hello"  # 6 msg_data
    b"\xa2\x01\x0c" + ATTACH_HANDLE_7  # 20 attach_data
)


def test_msg_data_decodes():
    msg = parse(IM_Message.IMMsgData, IM_MSG_DATA_BODY)
    assert msg.from_user_id == 1
    assert msg.to_session_id == 2
    assert msg.msg_id == 0
    assert msg.create_time == 1700000000
    assert msg.msg_type == IM_BaseDefine.MSG_TYPE_SINGLE_TEXT
    assert msg.msg_data == b"hello"
    assert msg.attach_data == ATTACH_HANDLE_7
    assert msg.IsInitialized()


def test_msg_data_round_trip_same_bytes():
    msg = parse(IM_Message.IMMsgData, IM_MSG_DATA_BODY)
    assert msg.SerializeToString() == IM_MSG_DATA_BODY


def test_msg_data_truncated():
    for cut in (1, 7, len(IM_MSG_DATA_BODY) - 1):
        with pytest.raises(DecodeError):
            parse(IM_Message.IMMsgData, IM_MSG_DATA_BODY[:cut])


def test_msg_data_undefined_msg_type():
    # proto2 enums are closed, so an undefined msg_type is kept as an unknown
    # field. The required field then counts as missing.
    body = IM_MSG_DATA_BODY.replace(b"\x28\x01", b"\x28\x03")
    msg = parse(IM_Message.IMMsgData, body)
    assert not msg.HasField("msg_type")
    assert unknown_field_numbers(msg) == [5]
    assert not msg.IsInitialized()


def test_msg_data_ack_missing_session_type():
    body = b"\x08\x01\x10\x02\x18\x07"  # user_id, session_id, msg_id only
    ack = parse(IM_Message.IMMsgDataAck, body)
    assert ack.msg_id == 7
    assert not ack.IsInitialized()
    assert ack.FindInitializationErrors() == ["session_type"]


def test_get_msg_list_rsp_decodes():
    msg_info = (
        b"\x08\x0b"  # 1 msg_id = 11
        b"\x10\x02"  # 2 from_session_id = 2
        b"\x18\x01"  # 3 create_time = 1
        b"\x20\x02"  # 4 msg_type = MSG_TYPE_SINGLE_AUDIO
        b"\x2a\x02\x01\x02"  # 5 msg_data
    )
    body = (
        b"\x08\x01"  # 1 user_id = 1
        b"\x10\x01"  # 2 session_type = SESSION_TYPE_SINGLE
        b"\x18\x02"  # 3 session_id = 2
        b"\x20\x0b"  # 4 msg_id_begin = 11
        + bytes([0x2A, len(msg_info)])  # 5 msg_list[0]
        + msg_info
    )
    rsp = parse(IM_Message.IMGetMsgListRsp, body)
    assert rsp.msg_id_begin == 11
    assert len(rsp.msg_list) == 1
    assert rsp.msg_list[0].msg_id == 11
    assert rsp.msg_list[0].msg_type == IM_BaseDefine.MSG_TYPE_SINGLE_AUDIO
    assert rsp.msg_list[0].msg_data == b"\x01\x02"
    assert rsp.IsInitialized()


def test_unread_msg_cnt_rsp_decodes():
    unread = (
        b"\x08\x02"  # 1 session_id = 2
        b"\x10\x01"  # 2 session_type = SESSION_TYPE_SINGLE
        b"\x18\x03"  # 3 unread_cnt = 3
        b"\x20\x09"  # 4 latest_msg_id = 9
        b"\x2a\x01x"  # 5 latest_msg_data
        b"\x30\x01"  # 6 latest_msg_type = MSG_TYPE_SINGLE_TEXT
        b"\x38\x02"  # 7 latest_msg_from_user_id = 2
    )
    body = b"\x08\x01\x10\x03" + bytes([0x1A, len(unread)]) + unread
    rsp = parse(IM_Message.IMUnreadMsgCntRsp, body)
    assert rsp.total_cnt == 3
    assert rsp.unreadinfo_list[0].unread_cnt == 3
    assert rsp.unreadinfo_list[0].latest_msg_from_user_id == 2
    assert rsp.IsInitialized()


# --- IM.Group -----------------------------------------------------------------


def test_group_create_req_decodes():
    body = (
        b"\x08\x01"  # 1 user_id = 1
        b"\x10\x02"  # 2 group_type = GROUP_TYPE_TMP
        b"\x1a\x04team"  # 3 group_name
        b"\x22\x00"  # 4 group_avatar
        b"\x28\x02\x28\x03"  # 5 member_id_list = [2, 3]
    )
    req = parse(IM_Group.IMGroupCreateReq, body)
    assert req.group_type == IM_BaseDefine.GROUP_TYPE_TMP
    assert req.group_name == "team"
    assert list(req.member_id_list) == [2, 3]
    assert req.IsInitialized()


def test_group_create_req_default_type_required():
    # The default applies only when reading. A sender must still put field 2 on the wire.
    body = b"\x08\x01\x1a\x04team\x22\x00"
    req = parse(IM_Group.IMGroupCreateReq, body)
    assert not req.HasField("group_type")
    assert req.group_type == IM_BaseDefine.GROUP_TYPE_TMP
    assert not req.IsInitialized()


def test_group_change_member_notify_decodes():
    body = (
        b"\x08\x01"  # 1 user_id = 1
        b"\x10\x02"  # 2 change_type = GROUP_MODIFY_TYPE_DEL
        b"\x18\x0a"  # 3 group_id = 10
        b"\x20\x01\x20\x02"  # 4 cur_user_id_list = [1, 2]
        b"\x28\x03"  # 5 chg_user_id_list = [3]
    )
    notify = parse(IM_Group.IMGroupChangeMemberNotify, body)
    assert notify.change_type == IM_BaseDefine.GROUP_MODIFY_TYPE_DEL
    assert notify.group_id == 10
    assert list(notify.cur_user_id_list) == [1, 2]
    assert list(notify.chg_user_id_list) == [3]


def test_group_create_rsp_optional_group_id():
    body = b"\x08\x01\x10\x01\x22\x04team"  # failure: no group_id
    rsp = parse(IM_Group.IMGroupCreateRsp, body)
    assert rsp.result_code == 1
    assert not rsp.HasField("group_id")
    assert rsp.IsInitialized()


# --- IM.File ------------------------------------------------------------------


def test_file_login_req_decodes():
    body = (
        b"\x08\x05"  # 1 user_id = 5
        b"\x12\x04t-01"  # 2 task_id
        b"\x18\x02"  # 3 file_role = CLIENT_REALTIME_RECVER
    )
    req = parse(IM_File.IMFileLoginReq, body)
    assert req.user_id == 5
    assert req.task_id == "t-01"
    assert req.file_role == IM_BaseDefine.CLIENT_REALTIME_RECVER


def test_file_rsp_decodes_ip_addr_list():
    ip_addr = b"\x0a\x09127.0.0.1\x10\xd9\x42"  # ip, port = 8537
    body = (
        b"\x08\x00"  # 1 result_code = 0
        b"\x10\x01"  # 2 from_user_id = 1
        b"\x18\x02"  # 3 to_user_id = 2
        b"\x22\x05a.txt"  # 4 file_name
        b"\x2a\x04t-01"  # 5 task_id
        + bytes([0x32, len(ip_addr)])  # 6 ip_addr_list[0]
        + ip_addr
        + b"\x38\x01"  # 7 trans_mode = FILE_TYPE_ONLINE
    )
    rsp = parse(IM_File.IMFileRsp, body)
    assert rsp.file_name == "a.txt"
    assert rsp.ip_addr_list[0].ip == "127.0.0.1"
    assert rsp.ip_addr_list[0].port == 8537
    assert rsp.trans_mode == IM_BaseDefine.FILE_TYPE_ONLINE
    assert rsp.IsInitialized()


def test_file_pull_data_rsp_decodes_binary_data():
    body = (
        b"\x08\x00"  # 1 result_code = 0
        b"\x12\x04t-01"  # 2 task_id
        b"\x18\x05"  # 3 user_id = 5
        b"\x20\x80\x80\x01"  # 4 offset = 16384
        b"\x2a\x04\x00\x01\xfe\xff"  # 5 file_data
    )
    rsp = parse(IM_File.IMFilePullDataRsp, body)
    assert rsp.offset == 16384
    assert rsp.file_data == b"\x00\x01\xfe\xff"


def test_file_pull_data_rsp_truncated():
    body = b"\x08\x00\x12\x04t-01\x18\x05\x20\x00\x2a\x08\x00\x01"
    with pytest.raises(DecodeError):
        parse(IM_File.IMFilePullDataRsp, body)


# --- IM.SwitchService ---------------------------------------------------------


def test_p2p_cmd_msg_decodes():
    body = (
        b"\x08\x01"  # 1 from_user_id = 1
        b"\x10\x02"  # 2 to_user_id = 2
        b"\x1a\x0d{\"cmd_id\": 1}"  # 3 cmd_msg_data, 13 bytes
    )
    msg = parse(IM_SwitchService.IMP2PCmdMsg, body)
    assert msg.from_user_id == 1
    assert msg.to_user_id == 2
    assert msg.cmd_msg_data == '{"cmd_id": 1}'
    assert msg.IsInitialized()


def test_p2p_cmd_msg_missing_data():
    msg = parse(IM_SwitchService.IMP2PCmdMsg, b"\x08\x01\x10\x02")
    assert not msg.IsInitialized()
    assert msg.FindInitializationErrors() == ["cmd_msg_data"]


# --- IM.Other -----------------------------------------------------------------


def test_heartbeat_empty_body():
    heartbeat = parse(IM_Other.IMHeartBeat, b"")
    assert heartbeat.IsInitialized()
    assert heartbeat.SerializeToString() == b""


def test_heartbeat_unknown_field_preserved():
    heartbeat = parse(IM_Other.IMHeartBeat, b"\x08\x01")
    assert unknown_field_numbers(heartbeat) == [1]
    assert heartbeat.SerializeToString() == b"\x08\x01"


def test_heartbeat_invalid_wire_type():
    with pytest.raises(DecodeError):
        parse(IM_Other.IMHeartBeat, b"\x0f\x01")  # wire type 7 does not exist


# --- IM.Server ----------------------------------------------------------------


def test_validate_req_decodes():
    body = (
        b"\x0a\x05alice"  # 1 user_name
        b"\x12\x03pwd"  # 2 password
        b"\xa2\x01\x0c" + ATTACH_HANDLE_7  # 20 attach_data
    )
    req = parse(IM_Server.IMValidateReq, body)
    assert req.user_name == "alice"
    assert req.password == "pwd"
    assert req.attach_data == ATTACH_HANDLE_7
    assert req.IsInitialized()


def test_validate_rsp_decodes_user_info():
    body = (
        b"\x0a\x03bob"  # 1 user_name
        b"\x10\x00"  # 2 result_code = 0
        + bytes([0x22, len(USER_INFO_BODY)])  # 4 user_info
        + USER_INFO_BODY
        + b"\xa2\x01\x0c"  # 20 attach_data
        + ATTACH_HANDLE_7
    )
    rsp = parse(IM_Server.IMValidateRsp, body)
    assert rsp.result_code == 0
    assert rsp.user_info.user_id == 300
    assert rsp.attach_data == ATTACH_HANDLE_7
    assert rsp.IsInitialized()


def test_msg_serv_info_decodes():
    body = (
        b"\x0a\x0910.0.0.10"  # 1 ip1
        b"\x12\x0910.0.0.11"  # 2 ip2
        b"\x18\xc0\x3e"  # 3 port = 8000
        b"\x20\x90\x4e"  # 4 max_conn_cnt = 10000
        b"\x28\x03"  # 5 cur_conn_cnt = 3
        b"\x32\x03ms1"  # 6 host_name
    )
    info = parse(IM_Server.IMMsgServInfo, body)
    assert info.ip1 == "10.0.0.10"
    assert info.ip2 == "10.0.0.11"
    assert info.port == 8000
    assert info.max_conn_cnt == 10000
    assert info.cur_conn_cnt == 3
    assert info.host_name == "ms1"
    assert info.IsInitialized()


def test_msg_serv_info_missing_host_name():
    body = b"\x0a\x01a\x12\x01b\x18\x01\x20\x01\x28\x00"
    info = parse(IM_Server.IMMsgServInfo, body)
    assert not info.IsInitialized()
    assert info.FindInitializationErrors() == ["host_name"]


def test_user_status_update_decodes():
    body = b"\x08\x02\x10\x07\x18\x01"  # offline, user 7, Windows
    update = parse(IM_Server.IMUserStatusUpdate, body)
    assert update.user_status == IM_BaseDefine.USER_STATUS_OFFLINE
    assert update.user_id == 7
    assert update.client_type == IM_BaseDefine.CLIENT_TYPE_WINDOWS


def test_file_transfer_rsp_optional_fields():
    body = b"\x08\x01\x10\x01\x18\x02"  # failure: only the required fields
    rsp = parse(IM_Server.IMFileTransferRsp, body)
    assert rsp.result_code == 1
    assert not rsp.HasField("task_id")
    assert not rsp.HasField("trans_mode")
    assert rsp.IsInitialized()


def test_server_kick_user_truncated_varint():
    with pytest.raises(DecodeError):
        parse(IM_Server.IMServerKickUser, b"\x08\x01\x10\x01\x18\x80")
