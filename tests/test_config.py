"""Tests of teamtalk.config: conf file syntax, schemas, overrides and errors."""

from __future__ import annotations

import argparse
import os
import pathlib

import pytest

from teamtalk import config
from teamtalk.config import (
    ConfigError,
    DbProxyConfig,
    MsgServerConfig,
    ServerAddress,
    load_config,
    parse_conf_file,
)

CONF_DIR = pathlib.Path(__file__).resolve().parent.parent / "conf"

SAMPLE_FILES = {
    "loginserver.conf": "login_server",
    "msgserver.conf": "msg_server",
    "routeserver.conf": "route_server",
    "dbproxyserver.conf": "db_proxy_server",
    "dbproxyserver-sqlite.conf": "db_proxy_server",
    "fileserver.conf": "file_server",
    "msfs.conf": "msfs",
    "httpmsgserver.conf": "http_msg_server",
    "pushserver.conf": "push_server",
}

AES_KEY = "0123456789abcdef0123456789abcdef"


def write_conf(tmp_path: pathlib.Path, text: str, name: str = "msgserver.conf") -> pathlib.Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(role: str, path, overrides=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(role, path, overrides)
    return str(info.value)


# Sample files and defaults

@pytest.mark.parametrize("file_name", sorted(SAMPLE_FILES))
def test_sample_file_loads(file_name):
    path = CONF_DIR / file_name
    loaded = load_config(SAMPLE_FILES[file_name], path)
    assert loaded.source == str(path)


@pytest.mark.parametrize("role", config.ROLES)
def test_sample_file_matches_rendered_text(role):
    path = CONF_DIR / config.conf_file_name(role)
    assert path.read_text(encoding="utf-8") == config.default_config_text(role)


@pytest.mark.parametrize("role", [role for role in config.ROLES if role != "db_proxy_server"])
def test_rendered_text_loads_as_defaults(tmp_path, role):
    path = write_conf(tmp_path, config.default_config_text(role), config.conf_file_name(role))
    from_text = load_config(role, path)
    from_defaults = load_config(role, None)
    assert from_text == config.dataclasses.replace(from_defaults, source=str(path))


@pytest.mark.parametrize("role", config.ROLES)
def test_load_config_defaults_only(role):
    loaded = load_config(role, None)
    assert loaded.source == "<defaults>"
    assert loaded.max_pdu_length == 1048576
    assert loaded.log_level == "INFO"


def test_load_config_default_ports():
    assert load_config("login_server").client_port == 8008
    assert load_config("login_server").http_port == 8080
    assert load_config("login_server").msg_server_port == 8100
    assert load_config("msg_server").listen_port == 8000
    assert load_config("route_server").listen_port == 8200
    assert load_config("db_proxy_server").listen_port == 10600
    assert load_config("file_server").client_listen_port == 8600
    assert load_config("file_server").msg_server_listen_port == 8601
    assert load_config("msfs").listen_port == 8700
    assert load_config("http_msg_server").listen_port == 8400
    assert load_config("push_server").listen_port == 8500


def test_load_config_msg_server_defaults():
    loaded = load_config("msg_server")
    assert isinstance(loaded, MsgServerConfig)
    assert loaded.listen_ips == ("127.0.0.1",)
    assert loaded.db_servers == (ServerAddress("127.0.0.1", 10600),)
    assert loaded.login_servers == (ServerAddress("127.0.0.1", 8100),)
    assert loaded.route_servers == (ServerAddress("127.0.0.1", 8200),)
    assert loaded.push_servers == (ServerAddress("127.0.0.1", 8500),)
    assert loaded.file_servers == (ServerAddress("127.0.0.1", 8601),)
    assert loaded.login_timeout == 15.0
    assert loaded.pc_client_timeout == 120.0
    assert loaded.mobile_client_timeout == 300.0
    assert loaded.pending_ack_timeout == 15.0
    assert loaded.max_msg_per_second == 20
    assert loaded.send_queue_length == 1024
    assert loaded.aes_key is None


def test_load_config_db_proxy_defaults_embedded():
    loaded = load_config("db_proxy_server")
    assert isinstance(loaded, DbProxyConfig)
    assert loaded.db_engine == "sqlite"
    assert loaded.cache_engine == "embedded"
    assert loaded.db_instances == ()
    assert loaded.cache_instances == ()


def test_load_config_unknown_role():
    with pytest.raises(ValueError, match="unknown role 'chat_server'"):
        load_config("chat_server")


# Syntax

def test_parse_conf_file_comments_and_whitespace(tmp_path):
    path = write_conf(tmp_path, (
        "# full-line comment\n"
        "\n"
        "   ListenIP =  127.0.0.1   # trailing comment\n"
        "\tListenPort\t=\t8000\t\n"
        "IpAddr1=10.0.0.1#no space before the comment\n"
        "   # indented comment\n"
    ))
    entries = parse_conf_file(path)
    assert list(entries) == ["ListenIP", "ListenPort", "IpAddr1"]
    assert entries["ListenIP"].value == "127.0.0.1"
    assert entries["ListenIP"].line == 3
    assert entries["ListenPort"].value == "8000"
    assert entries["IpAddr1"].value == "10.0.0.1"


def test_parse_conf_file_value_keeps_equals_sign(tmp_path):
    path = write_conf(tmp_path, "discovery=http://h/x?a=1&b=2\n", "loginserver.conf")
    assert parse_conf_file(path)["discovery"].value == "http://h/x?a=1&b=2"


def test_parse_conf_file_crlf_and_bom(tmp_path):
    path = tmp_path / "routeserver.conf"
    path.write_bytes(b"\xef\xbb\xbfListenIP=127.0.0.1\r\nListenMsgPort=8201\r\n")
    loaded = load_config("route_server", path)
    assert loaded.listen_ips == ("127.0.0.1",)
    assert loaded.listen_port == 8201


def test_parse_conf_file_comment_in_other_encoding(tmp_path):
    path = tmp_path / "msgserver.conf"
    path.write_bytes("IpAddr1=10.0.0.1\t#电信IP\n".encode("gbk"))
    assert load_config("msg_server", path).ip_addr1 == "10.0.0.1"


def test_parse_conf_file_invalid_utf8_value(tmp_path):
    path = tmp_path / "msgserver.conf"
    path.write_bytes("IpAddr1=电信\n".encode("gbk"))
    message = load_error("msg_server", path)
    assert f"{path} line 1" in message
    assert "invalid UTF-8" in message


def test_parse_conf_file_missing_file(tmp_path):
    path = tmp_path / "absent" / "msgserver.conf"
    message = load_error("msg_server", path)
    assert message == f"cannot read config file {path}: No such file or directory"


def test_parse_conf_file_malformed_line(tmp_path):
    path = write_conf(tmp_path, "ListenIP=127.0.0.1\nListenPort 8000\n")
    message = load_error("msg_server", path)
    assert message == f"{path} line 2: malformed line, expected key=value"


def test_parse_conf_file_empty_key(tmp_path):
    path = write_conf(tmp_path, "=8000\n")
    message = load_error("msg_server", path)
    assert f"{path} line 1: malformed line" in message


def test_parse_conf_file_duplicate_key(tmp_path):
    path = write_conf(tmp_path, "ListenPort=8000\nListenIP=127.0.0.1\nListenPort=8001\n")
    message = load_error("msg_server", path)
    assert f"{path} line 3" in message
    assert "duplicate key 'ListenPort'" in message
    assert "first set on line 1" in message


def test_parse_conf_file_lists_every_syntax_problem(tmp_path):
    path = write_conf(tmp_path, "oops\nListenPort=1\nListenPort=2\n")
    with pytest.raises(ConfigError) as info:
        load_config("msg_server", path)
    assert len(info.value.problems) == 2


# Values

def test_load_config_misspelt_key_suggests(tmp_path):
    path = write_conf(tmp_path, "ListenProt=8000\n")
    message = load_error("msg_server", path)
    assert str(path) in message
    assert "unknown key 'ListenProt'" in message
    assert "did you mean 'ListenPort'?" in message


def test_load_config_wrong_case_key_suggests(tmp_path):
    path = write_conf(tmp_path, "listenip=127.0.0.1\n")
    message = load_error("msg_server", path)
    assert "unknown key 'listenip'" in message
    assert "did you mean 'ListenIP'?" in message


def test_load_config_route_server_port_key_suggests(tmp_path):
    path = write_conf(tmp_path, "ListenPort=8200\n", "routeserver.conf")
    message = load_error("route_server", path)
    assert "did you mean 'ListenMsgPort'?" in message


def test_load_config_non_numeric_port(tmp_path):
    path = write_conf(tmp_path, "ListenIP=127.0.0.1\nListenPort=abc\n")
    message = load_error("msg_server", path)
    assert str(path) in message
    assert "line 2" in message
    assert "'ListenPort'" in message
    assert "'abc'" in message
    assert "expected an integer port" in message


def test_load_config_port_out_of_range(tmp_path):
    path = write_conf(tmp_path, "DBServerIP1=127.0.0.1\nDBServerPort1=70000\n")
    message = load_error("msg_server", path)
    assert str(path) in message
    assert "'DBServerPort1'" in message
    assert "'70000'" in message
    assert "expected an integer port 1-65535" in message


def test_load_config_listen_port_zero_allowed(tmp_path):
    path = write_conf(tmp_path, "ListenPort=0\n")
    assert load_config("msg_server", path).listen_port == 0


def test_load_config_connect_port_zero_rejected(tmp_path):
    path = write_conf(tmp_path, "DBServerIP1=127.0.0.1\nDBServerPort1=0\n")
    message = load_error("msg_server", path)
    assert "'DBServerPort1' has invalid value '0'" in message


def test_load_config_empty_value(tmp_path):
    path = write_conf(tmp_path, "ListenPort=\n")
    message = load_error("msg_server", path)
    assert str(path) in message
    assert "key 'ListenPort' has invalid value ''" in message


def test_load_config_empty_text_value(tmp_path):
    path = write_conf(tmp_path, "BaseDir=   # nothing\n", "msfs.conf")
    message = load_error("msfs", path)
    assert "key 'BaseDir' has invalid value ''" in message
    assert "expected a non-empty value" in message


def test_load_config_listen_ip_list(tmp_path):
    path = write_conf(tmp_path, "ListenIP=127.0.0.1; ::1\n")
    assert load_config("msg_server", path).listen_ips == ("127.0.0.1", "::1")


def test_load_config_listen_ip_host_name_rejected(tmp_path):
    path = write_conf(tmp_path, "ListenIP=localhost\n")
    message = load_error("msg_server", path)
    assert "key 'ListenIP' has invalid value 'localhost'" in message
    assert "expected IP addresses separated by ';'" in message


def test_load_config_listen_ip_empty_item(tmp_path):
    path = write_conf(tmp_path, "ListenIP=127.0.0.1;\n")
    message = load_error("msg_server", path)
    assert "key 'ListenIP' has invalid value '127.0.0.1;'" in message


def test_load_config_server_host_name(tmp_path):
    path = write_conf(tmp_path, "RouteServerIP1=localhost\nRouteServerPort1=8200\n")
    assert load_config("msg_server", path).route_servers == (ServerAddress("localhost", 8200),)


def test_load_config_server_host_invalid(tmp_path):
    path = write_conf(tmp_path, "RouteServerIP1=bad host!\nRouteServerPort1=8200\n")
    message = load_error("msg_server", path)
    assert "key 'RouteServerIP1' has invalid value 'bad host!'" in message
    assert "expected an IP address or host name" in message


def test_load_config_server_host_bad_ipv4(tmp_path):
    path = write_conf(tmp_path, "RouteServerIP1=300.1.1.1\nRouteServerPort1=8200\n")
    message = load_error("msg_server", path)
    assert "'300.1.1.1'" in message


def test_load_config_seconds(tmp_path):
    path = write_conf(tmp_path, "LoginTimeout=2.5\nPcClientTimeout=60\n")
    loaded = load_config("msg_server", path)
    assert loaded.login_timeout == 2.5
    assert loaded.pc_client_timeout == 60.0


@pytest.mark.parametrize("value", ["0", "-1", "abc", "1e3", "nan", "inf"])
def test_load_config_seconds_invalid(tmp_path, value):
    path = write_conf(tmp_path, f"LoginTimeout={value}\n")
    message = load_error("msg_server", path)
    assert f"key 'LoginTimeout' has invalid value {value!r}" in message
    assert "expected a number of seconds greater than 0" in message


def test_load_config_server_timeout_not_above_heartbeat(tmp_path):
    path = write_conf(tmp_path, "ServerHeartbeatInterval=10\nServerTimeout=10\n", "routeserver.conf")
    message = load_error("route_server", path)
    assert "key 'ServerTimeout' has invalid value '10'" in message
    assert "expected more than ServerHeartbeatInterval (10 s)" in message


def test_load_config_heartbeat_above_default_timeout(tmp_path):
    path = write_conf(tmp_path, "ServerHeartbeatInterval=60\n", "routeserver.conf")
    message = load_error("route_server", path)
    assert "key 'ServerHeartbeatInterval' has invalid value '60'" in message
    assert "expected less than ServerTimeout (30 s)" in message


def test_load_config_log_level_any_case(tmp_path):
    path = write_conf(tmp_path, "LogLevel=debug\n", "routeserver.conf")
    assert load_config("route_server", path).log_level == "DEBUG"


def test_load_config_log_level_invalid(tmp_path):
    path = write_conf(tmp_path, "LogLevel=LOUD\n", "routeserver.conf")
    message = load_error("route_server", path)
    assert "key 'LogLevel' has invalid value 'LOUD'" in message
    assert "expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL" in message


def test_load_config_bool(tmp_path):
    path = write_conf(tmp_path, "SandBox=1\n", "pushserver.conf")
    assert load_config("push_server", path).sandbox is True


def test_load_config_bool_invalid(tmp_path):
    path = write_conf(tmp_path, "SandBox=2\n", "pushserver.conf")
    message = load_error("push_server", path)
    assert "key 'SandBox' has invalid value '2'" in message


def test_load_config_aes_key(tmp_path):
    path = write_conf(tmp_path, f"aesKey={AES_KEY}\n")
    assert load_config("msg_server", path).aes_key == AES_KEY


def test_load_config_aes_key_wrong_length_hidden(tmp_path):
    path = write_conf(tmp_path, "aesKey=tooshortsecret\n")
    message = load_error("msg_server", path)
    assert "key 'aesKey' has invalid value of 14 bytes (hidden)" in message
    assert "tooshortsecret" not in message


def test_load_config_url_invalid(tmp_path):
    path = write_conf(tmp_path, "msfs=ftp://127.0.0.1/\n", "loginserver.conf")
    message = load_error("login_server", path)
    assert "key 'msfs' has invalid value 'ftp://127.0.0.1/'" in message
    assert "expected an http:// or https:// URL" in message


def test_load_config_ip_addr2_defaults_to_ip_addr1(tmp_path):
    path = write_conf(tmp_path, "IpAddr1=10.1.2.3\n")
    loaded = load_config("msg_server", path)
    assert loaded.ip_addr2 == "10.1.2.3"


def test_load_config_ignored_key_accepted(tmp_path):
    path = write_conf(tmp_path, "ThreadNum=48\n", "dbproxyserver.conf")
    assert load_config("db_proxy_server", path).db_engine == "sqlite"


def test_load_config_ignored_key_still_validated(tmp_path):
    path = write_conf(tmp_path, "ThreadNum=many\n", "dbproxyserver.conf")
    message = load_error("db_proxy_server", path)
    assert "key 'ThreadNum' has invalid value 'many'" in message


def test_load_config_lists_every_value_problem(tmp_path):
    path = write_conf(tmp_path, "ListenPort=abc\nMaxConnCnt=0\nBogus=1\n")
    with pytest.raises(ConfigError) as info:
        load_config("msg_server", path)
    assert len(info.value.problems) == 3


# Numbered server keys

def test_load_config_numbered_servers_in_order(tmp_path):
    path = write_conf(tmp_path, (
        "DBServerIP2=127.0.0.2\nDBServerPort2=10601\n"
        "DBServerIP1=127.0.0.1\nDBServerPort1=10600\n"
        "DBServerIP3=db3.example.com\nDBServerPort3=10602\n"
    ))
    assert load_config("msg_server", path).db_servers == (
        ServerAddress("127.0.0.1", 10600),
        ServerAddress("127.0.0.2", 10601),
        ServerAddress("db3.example.com", 10602),
    )


def test_load_config_numbered_servers_gap(tmp_path):
    path = write_conf(tmp_path, (
        "DBServerIP1=127.0.0.1\nDBServerPort1=10600\n"
        "DBServerIP3=127.0.0.1\nDBServerPort3=10601\n"
    ))
    message = load_error("msg_server", path)
    assert f"{path} line 3" in message
    assert "key 'DBServerIP3' is out of sequence" in message
    assert "DBServerIP2 and DBServerPort2 are missing" in message


def test_load_config_numbered_servers_start_at_two(tmp_path):
    path = write_conf(tmp_path, "LoginServerIP2=127.0.0.1\nLoginServerPort2=8100\n")
    message = load_error("msg_server", path)
    assert "key 'LoginServerIP2' is out of sequence" in message


def test_load_config_numbered_server_without_port(tmp_path):
    path = write_conf(tmp_path, "DBServerIP1=127.0.0.1\nDBServerPort1=10600\nDBServerIP2=127.0.0.1\n")
    message = load_error("msg_server", path)
    assert str(path) in message
    assert "missing required key 'DBServerPort2' (DBServerIP2 is set)" in message


def test_load_config_numbered_server_leading_zero_unknown(tmp_path):
    path = write_conf(tmp_path, "DBServerIP01=127.0.0.1\n")
    message = load_error("msg_server", path)
    assert "unknown key 'DBServerIP01'" in message


def test_load_config_numbered_keys_absent_keep_default(tmp_path):
    path = write_conf(tmp_path, "ListenPort=8000\n")
    loaded = load_config("msg_server", path)
    assert loaded.push_servers == (ServerAddress("127.0.0.1", 8500),)


def test_load_config_numbered_keys_unknown_in_role(tmp_path):
    path = write_conf(tmp_path, "LoginServerIP1=127.0.0.1\nLoginServerPort1=8100\n", "httpmsgserver.conf")
    message = load_error("http_msg_server", path)
    assert "unknown key 'LoginServerIP1'" in message


# db_proxy_server instances

MYSQL_REDIS_CONF = """\
DBInstances=teamtalk_master, teamtalk_slave
teamtalk_master_host=127.0.0.1
teamtalk_master_port=3306
teamtalk_master_dbname=teamtalk
teamtalk_master_username=root
teamtalk_master_password=
teamtalk_master_maxconncnt=16
teamtalk_slave_host=db2.example.com
teamtalk_slave_port=3307
teamtalk_slave_dbname=teamtalk
teamtalk_slave_username=reader
teamtalk_slave_password=s3cret
teamtalk_slave_maxconncnt=8
CacheInstances=unread,group_set,token,sync,group_member
unread_host=127.0.0.1
unread_port=6379
unread_db=1
unread_maxconncnt=16
group_set_host=127.0.0.1
group_set_port=6379
group_set_db=2
group_set_maxconncnt=16
token_host=127.0.0.1
token_port=6379
token_db=4
token_maxconncnt=16
sync_host=127.0.0.1
sync_port=6379
sync_db=3
sync_maxconncnt=1
group_member_host=127.0.0.1
group_member_port=6379
group_member_db=5
group_member_maxconncnt=48
group_member_password=redispass
"""


def test_load_config_db_instances(tmp_path):
    path = write_conf(tmp_path, MYSQL_REDIS_CONF, "dbproxyserver.conf")
    loaded = load_config("db_proxy_server", path)
    assert loaded.db_engine == "mysql"
    assert [instance.name for instance in loaded.db_instances] == ["teamtalk_master", "teamtalk_slave"]
    slave = loaded.db_instance("teamtalk_slave")
    assert slave.host == "db2.example.com"
    assert slave.port == 3307
    assert slave.dbname == "teamtalk"
    assert slave.username == "reader"
    assert slave.password == "s3cret"
    assert slave.max_conn_cnt == 8
    assert loaded.db_instance("teamtalk_master").password == ""


def test_load_config_cache_instances(tmp_path):
    path = write_conf(tmp_path, MYSQL_REDIS_CONF, "dbproxyserver.conf")
    loaded = load_config("db_proxy_server", path)
    assert loaded.cache_engine == "redis"
    assert len(loaded.cache_instances) == 5
    assert loaded.cache_instance("unread").db == 1
    assert loaded.cache_instance("unread").password == ""
    assert loaded.cache_instance("group_member").password == "redispass"
    assert loaded.cache_instance("group_member").max_conn_cnt == 48


def test_load_config_instance_lookup_unknown_name(tmp_path):
    path = write_conf(tmp_path, MYSQL_REDIS_CONF, "dbproxyserver.conf")
    loaded = load_config("db_proxy_server", path)
    with pytest.raises(KeyError):
        loaded.db_instance("teamtalk_other")


def test_load_config_passwords_not_in_repr(tmp_path):
    path = write_conf(tmp_path, MYSQL_REDIS_CONF + f"aesKey={AES_KEY}\n", "dbproxyserver.conf")
    text = repr(load_config("db_proxy_server", path))
    assert "s3cret" not in text
    assert "redispass" not in text
    assert AES_KEY not in text


def test_load_config_unknown_db_instance_key(tmp_path):
    path = write_conf(tmp_path, MYSQL_REDIS_CONF + "teamtalk_mastr_host=127.0.0.1\n", "dbproxyserver.conf")
    message = load_error("db_proxy_server", path)
    assert str(path) in message
    assert "unknown key 'teamtalk_mastr_host'" in message
    assert "'teamtalk_mastr' is not listed in DBInstances or CacheInstances" in message
    assert "did you mean 'teamtalk_master_host'?" in message


def test_load_config_unknown_instance_field(tmp_path):
    path = write_conf(tmp_path, MYSQL_REDIS_CONF + "teamtalk_master_db=1\n", "dbproxyserver.conf")
    message = load_error("db_proxy_server", path)
    assert "unknown key 'teamtalk_master_db'" in message


def test_load_config_missing_instance_key(tmp_path):
    text = MYSQL_REDIS_CONF.replace("teamtalk_slave_host=db2.example.com\n", "")
    path = write_conf(tmp_path, text, "dbproxyserver.conf")
    message = load_error("db_proxy_server", path)
    assert str(path) in message
    assert "missing required key 'teamtalk_slave_host'" in message
    assert "teamtalk_slave is listed in DBInstances" in message


def test_load_config_invalid_instance_value(tmp_path):
    text = MYSQL_REDIS_CONF.replace("unread_db=1", "unread_db=one")
    path = write_conf(tmp_path, text, "dbproxyserver.conf")
    message = load_error("db_proxy_server", path)
    assert "key 'unread_db' has invalid value 'one'" in message


def test_load_config_instance_list_duplicate_name(tmp_path):
    text = MYSQL_REDIS_CONF.replace("DBInstances=teamtalk_master, teamtalk_slave",
                                    "DBInstances=teamtalk_master,teamtalk_master")
    path = write_conf(tmp_path, text, "dbproxyserver.conf")
    message = load_error("db_proxy_server", path)
    assert "key 'DBInstances' has invalid value 'teamtalk_master,teamtalk_master'" in message
    assert "'teamtalk_master' is listed twice" in message


def test_load_config_instance_list_invalid_no_cascade(tmp_path):
    text = MYSQL_REDIS_CONF.replace("DBInstances=teamtalk_master, teamtalk_slave",
                                    "DBInstances=teamtalk master")
    path = write_conf(tmp_path, text, "dbproxyserver.conf")
    with pytest.raises(ConfigError) as info:
        load_config("db_proxy_server", path)
    assert len(info.value.problems) == 1


def test_load_config_mysql_needs_master(tmp_path):
    text = MYSQL_REDIS_CONF.replace("DBInstances=teamtalk_master, teamtalk_slave",
                                    "DBInstances=teamtalk_slave")
    text = "\n".join(line for line in text.splitlines() if not line.startswith("teamtalk_master_"))
    path = write_conf(tmp_path, text, "dbproxyserver.conf")
    message = load_error("db_proxy_server", path)
    assert "key 'DBInstances' has invalid value 'teamtalk_slave'" in message
    assert "includes teamtalk_master" in message


def test_load_config_mysql_without_instances(tmp_path):
    path = write_conf(tmp_path, "DBEngine=mysql\n", "dbproxyserver.conf")
    message = load_error("db_proxy_server", path)
    assert f"{path}: missing required key 'DBInstances'" in message


def test_load_config_redis_needs_pools(tmp_path):
    path = write_conf(tmp_path, (
        "CacheInstances=unread\n"
        "unread_host=127.0.0.1\nunread_port=6379\nunread_db=1\nunread_maxconncnt=4\n"
    ), "dbproxyserver.conf")
    message = load_error("db_proxy_server", path)
    assert "key 'CacheInstances' has invalid value 'unread'" in message
    assert "group_set, token, group_member" in message


def test_load_config_engine_choice_overrides_instances(tmp_path):
    path = write_conf(tmp_path, MYSQL_REDIS_CONF + "DBEngine=SQLite\nCacheEngine=embedded\n",
                      "dbproxyserver.conf")
    loaded = load_config("db_proxy_server", path)
    assert loaded.db_engine == "sqlite"
    assert loaded.cache_engine == "embedded"


def test_load_config_engine_invalid(tmp_path):
    path = write_conf(tmp_path, "DBEngine=postgres\n", "dbproxyserver.conf")
    message = load_error("db_proxy_server", path)
    assert "key 'DBEngine' has invalid value 'postgres'" in message
    assert "expected one of mysql, sqlite" in message


def test_load_config_sqlite_sample():
    loaded = load_config("db_proxy_server", CONF_DIR / "dbproxyserver-sqlite.conf")
    assert loaded.db_engine == "sqlite"
    assert loaded.cache_engine == "embedded"
    # A relative SqliteFile is relative to the conf file, wherever the command runs.
    assert loaded.sqlite_file == os.path.join(os.path.abspath(CONF_DIR), "teamtalk.db")


def test_sqlite_file_relative_to_conf_dir(tmp_path, monkeypatch):
    conf = tmp_path / "etc" / "dbproxyserver.conf"
    conf.parent.mkdir()
    conf.write_text("SqliteFile=data/tt.db\n")
    monkeypatch.chdir(tmp_path)
    assert load_config("db_proxy_server", conf).sqlite_file == str(tmp_path / "etc" / "data" / "tt.db")
    conf.write_text(f"SqliteFile={tmp_path}/abs.db\n")
    assert load_config("db_proxy_server", conf).sqlite_file == f"{tmp_path}/abs.db"


def test_load_config_mysql_sample():
    loaded = load_config("db_proxy_server", CONF_DIR / "dbproxyserver.conf")
    assert loaded.db_engine == "mysql"
    assert loaded.cache_engine == "redis"
    assert loaded.db_instance("teamtalk_master").port == 3306
    assert loaded.cache_instance("token").port == 6379


# Overrides

def test_load_config_override_wins(tmp_path):
    path = write_conf(tmp_path, "ListenPort=8000\n")
    loaded = load_config("msg_server", path, {"ListenPort": "9000"})
    assert loaded.listen_port == 9000
    assert loaded.source == str(path)


def test_load_config_override_without_file():
    loaded = load_config("route_server", None, {"ListenMsgPort": " 0 "})
    assert loaded.listen_port == 0


def test_load_config_override_adds_instance_key(tmp_path):
    path = write_conf(tmp_path, MYSQL_REDIS_CONF, "dbproxyserver.conf")
    loaded = load_config("db_proxy_server", path, {"teamtalk_master_port": "3310"})
    assert loaded.db_instance("teamtalk_master").port == 3310


def test_load_config_override_invalid_value(tmp_path):
    path = write_conf(tmp_path, "ListenPort=8000\n")
    message = load_error("msg_server", path, {"ListenPort": "abc"})
    assert message.startswith("command line: key 'ListenPort' has invalid value 'abc'")


def test_load_config_override_unknown_key():
    message = load_error("msg_server", None, {"ListenProt": "9000"})
    assert "command line: unknown key 'ListenProt'" in message
    assert "did you mean 'ListenPort'?" in message


def test_override_arguments_parsed():
    parser = argparse.ArgumentParser()
    config.add_override_arguments(parser)
    args = parser.parse_args(["--set", "ListenPort=9000", "--set", "aesKey = x=y "])
    assert config.overrides_from_args(args) == {"ListenPort": "9000", "aesKey": "x=y"}


def test_override_arguments_absent():
    parser = argparse.ArgumentParser()
    config.add_override_arguments(parser)
    assert config.overrides_from_args(parser.parse_args([])) == {}


def test_override_arguments_malformed(capsys):
    parser = argparse.ArgumentParser()
    config.add_override_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--set", "ListenPort"])
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_override_arguments_duplicate_key():
    parser = argparse.ArgumentParser()
    config.add_override_arguments(parser)
    args = parser.parse_args(["--set", "ListenPort=1", "--set", "ListenPort=2"])
    with pytest.raises(ConfigError, match="command line: duplicate key 'ListenPort'"):
        config.overrides_from_args(args)


# Rendering

def test_default_config_text_comments_out_extension_keys():
    text = config.default_config_text("msg_server")
    assert "\nListenPort=8000\n" in text
    assert "\n#LoginTimeout=15\n" in text
    assert "\n#MaxPduLength=1048576\n" in text


def test_default_config_text_unknown_role():
    with pytest.raises(ValueError):
        config.default_config_text("chat_server")


def test_load_config_problems_in_line_order(tmp_path):
    path = write_conf(tmp_path, "Bogus=1\nListenPort=abc\nMaxConnCnt=0\n")
    with pytest.raises(ConfigError) as info:
        load_config("msg_server", path, {"ListenIP": "x"})
    assert [problem.split(":")[0] for problem in info.value.problems] == [
        f"{path} line 1", f"{path} line 2", f"{path} line 3", "command line",
    ]


def test_load_config_numbered_key_huge_index(tmp_path):
    path = write_conf(tmp_path, "DBServerIP1=127.0.0.1\nDBServerPort1=10600\nDBServerIP999999999999=x\n")
    message = load_error("msg_server", path)
    assert "key 'DBServerIP999999999999' is out of sequence" in message


def test_load_config_override_value_not_string():
    assert load_config("route_server", None, {"ListenMsgPort": 0}).listen_port == 0
