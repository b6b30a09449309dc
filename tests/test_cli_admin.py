"""Tests of the administration commands of ``teamtalk``: init-db, user and depart.

Also the command's own behaviour: argument errors, sample-config, role
command errors, and output into a closed pipe (in child processes).

The commands run in-process through ``teamtalk.cli.main`` on a data
directory (embedded SQLite) and on a fresh database of the private MariaDB
server. These tests are synchronous because each command runs its own
``trio.run``.
"""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
import urllib.parse

import pytest
import trio

from teamtalk.cli import EXIT_BROKEN_PIPE, main
from teamtalk.storage import open_embedded_database, users
from teamtalk.storage.database import open_mysql


@pytest.fixture(params=["embedded", "mysql"])
def storage_args(request, tmp_path, capsys) -> list[str]:
    """Storage options of one backend: ``--data-dir``, or ``--mysql-url`` after init-db.

    A data directory gets its tables when a command opens it; a MySQL
    database needs ``init-db`` first.
    """
    if request.param == "embedded":
        return ["--data-dir", str(tmp_path / "data")]
    args = ["--mysql-url", request.getfixturevalue("mysql_url")]
    assert main(["init-db", *args]) == 0
    capsys.readouterr()
    return args


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """Run the command line and return (exit status, stdout, stderr)."""
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def validate(storage_args: list[str], name: str, plain: str) -> users.UserRow | None:
    """Check a password through the storage API, on the database the options name."""

    async def check():
        option, value = storage_args
        if option == "--data-dir":
            database = await open_embedded_database(value)
        else:
            parts = urllib.parse.urlsplit(value)
            database = await open_mysql("check", parts.hostname, parts.port, parts.username,
                                        parts.password or "", parts.path.lstrip("/"), 1)
        try:
            return await users.validate_user(database, name, users.hash_client_password(plain))
        finally:
            await database.aclose()

    return trio.run(check)


def test_init_db_twice(capsys, storage_args):
    first = run(capsys, "init-db", *storage_args)
    second = run(capsys, "init-db", *storage_args)

    assert first[0] == 0
    assert second[0] == 0
    assert "26 tables ready" in first[1]
    assert second[1] == first[1]


def test_init_db_creates_missing_data_dir(capsys, tmp_path):
    data_dir = tmp_path / "deep" / "er" / "data"

    status, out, err = run(capsys, "init-db", "--data-dir", str(data_dir))

    assert status == 0
    assert (data_dir / "teamtalk.db").is_file()
    assert err == ""


def test_data_dir_from_environment(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TEAMTALK_DATA_DIR", str(tmp_path / "env"))

    status, out, err = run(capsys, "depart", "add", "Sales")

    assert status == 0
    assert (tmp_path / "env" / "teamtalk.db").is_file()


def test_user_add_and_list(capsys, storage_args):
    run(capsys, "init-db", *storage_args)
    run(capsys, "depart", "add", "研发部", *storage_args)

    added = run(capsys, "user", "add", "alice", "--password", "pw1", "--nick", "爱丽丝😀",
                "--depart", "1", "--email", "alice@example.com", "--phone", "12345", "--sex", "2",
                *storage_args)
    listed = run(capsys, "user", "list", *storage_args)

    assert added[0] == 0
    assert "added user 1: alice" in added[1]
    assert listed[0] == 0
    lines = listed[1].splitlines()
    assert lines[0].split() == ["ID", "NAME", "NICK", "DEPART", "STATUS", "EMAIL", "PHONE"]
    assert lines[1].split() == ["1", "alice", "爱丽丝😀", "1", "active", "alice@example.com", "12345"]
    assert validate(storage_args, "alice", "pw1") is not None


def test_user_list_columns_align_with_wide_characters(capsys, tmp_path):
    args = ["--data-dir", str(tmp_path)]
    run(capsys, "user", "add", "张三", "--password", "pw", *args)
    run(capsys, "user", "add", "bob", "--password", "pw", *args)

    status, out, err = run(capsys, "user", "list", *args)

    header, first, second = out.splitlines()
    # "张三" is two characters wide each, so the DEPART column of its row
    # starts two characters earlier in the string but at the same column.
    assert first.index("0") + 2 == second.index("0")
    assert header.index("DEPART") == second.index("0")


def test_user_add_duplicate_fails(capsys, storage_args):
    run(capsys, "user", "add", "alice", "--password", "pw", *storage_args)

    status, out, err = run(capsys, "user", "add", "alice", "--password", "other", *storage_args)

    assert status == 1
    assert "already exists" in err
    assert validate(storage_args, "alice", "pw") is not None


def test_user_add_unknown_depart_fails(capsys, storage_args):
    status, out, err = run(capsys, "user", "add", "alice", "--password", "pw", "--depart", "7", *storage_args)

    assert status == 1
    assert "no department with id 7" in err
    assert "depart list" in err


def test_user_add_too_long_name_fails(capsys, storage_args):
    status, out, err = run(capsys, "user", "add", "a" * 33, "--password", "pw", *storage_args)

    assert status == 1
    assert "at most 32" in err


def test_user_add_real_name_must_equal_name(capsys, tmp_path):
    status, out, err = run(capsys, "user", "add", "alice", "--password", "pw", "--real-name", "Alice Smith",
                           "--data-dir", str(tmp_path))

    assert status == 1
    assert "real name" in err


def test_user_add_invalid_sex_is_usage_error(capsys, tmp_path):
    status, out, err = run(capsys, "user", "add", "alice", "--password", "pw", "--sex", "5",
                           "--data-dir", str(tmp_path))

    assert status == 2
    assert "--sex" in err


def test_user_add_injection_name_stored_literally(capsys, storage_args):
    name = "x' or '1'='1"
    run(capsys, "user", "add", "alice", "--password", "alice-pw", *storage_args)

    status, out, err = run(capsys, "user", "add", name, "--password", "pw", *storage_args)
    listed = run(capsys, "user", "list", *storage_args)

    assert status == 0
    assert name in listed[1]
    assert validate(storage_args, name, "pw") is not None
    assert validate(storage_args, name, "alice-pw") is None


def test_user_passwd(capsys, storage_args):
    run(capsys, "user", "add", "alice", "--password", "old", *storage_args)

    status, out, err = run(capsys, "user", "passwd", "alice", "--password", "new", *storage_args)

    assert status == 0
    assert "password of alice changed" in out
    assert validate(storage_args, "alice", "old") is None
    assert validate(storage_args, "alice", "new") is not None


def test_user_passwd_unknown_user(capsys, storage_args):
    run(capsys, "init-db", *storage_args)

    status, out, err = run(capsys, "user", "passwd", "nobody", "--password", "x", *storage_args)

    assert status == 1
    assert "no user named 'nobody'" in err


def test_user_disable_and_enable(capsys, storage_args):
    run(capsys, "user", "add", "alice", "--password", "pw", *storage_args)

    disabled = run(capsys, "user", "disable", "alice", *storage_args)
    listed = run(capsys, "user", "list", *storage_args)
    rejected = validate(storage_args, "alice", "pw")
    enabled = run(capsys, "user", "enable", "alice", *storage_args)

    assert disabled[0] == 0
    assert "disabled" in listed[1].splitlines()[1]
    assert rejected is None
    assert enabled[0] == 0
    assert validate(storage_args, "alice", "pw") is not None


def test_user_disable_unknown_user(capsys, storage_args):
    run(capsys, "init-db", *storage_args)

    status, out, err = run(capsys, "user", "disable", "nobody", *storage_args)

    assert status == 1
    assert "nobody" in err


def test_user_add_prompts_for_password(capsys, tmp_path, monkeypatch):
    answers = iter(["typed-pw", "typed-pw"])
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": next(answers))
    args = ["--data-dir", str(tmp_path)]

    status, out, err = run(capsys, "user", "add", "alice", *args)

    assert status == 0
    assert validate(args, "alice", "typed-pw") is not None


def test_user_add_prompt_mismatch_fails(capsys, tmp_path, monkeypatch):
    answers = iter(["one", "two"])
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": next(answers))

    status, out, err = run(capsys, "user", "add", "alice", "--data-dir", str(tmp_path))

    assert status == 1
    assert "differ" in err


def test_user_add_without_terminal_fails(capsys, tmp_path, monkeypatch):
    def no_terminal(prompt=""):
        raise EOFError

    monkeypatch.setattr(getpass, "getpass", no_terminal)

    status, out, err = run(capsys, "user", "add", "alice", "--data-dir", str(tmp_path))

    assert status == 1
    assert "--password" in err


def test_depart_add_and_list(capsys, storage_args):
    root = run(capsys, "depart", "add", "Engineering", "--priority", "2", *storage_args)
    child = run(capsys, "depart", "add", "Backend", "--parent", "1", *storage_args)
    listed = run(capsys, "depart", "list", *storage_args)

    assert root[0] == 0
    assert "added department 1: Engineering" in root[1]
    assert child[0] == 0
    assert [line.split() for line in listed[1].splitlines()] == [
        ["ID", "NAME", "PARENT", "PRIORITY", "STATUS"],
        ["1", "Engineering", "0", "2", "ok"],
        ["2", "Backend", "1", "0", "ok"],
    ]


def test_depart_add_unknown_parent_fails(capsys, storage_args):
    status, out, err = run(capsys, "depart", "add", "Orphan", "--parent", "9", *storage_args)

    assert status == 1
    assert "no department with id 9" in err


def test_depart_add_negative_priority_is_usage_error(capsys, tmp_path):
    status, out, err = run(capsys, "depart", "add", "X", "--priority", "-1", "--data-dir", str(tmp_path))

    assert status == 2
    assert "must be 0 or more" in err


def test_storage_options_are_exclusive(capsys, tmp_path):
    status, out, err = run(capsys, "user", "list", "--data-dir", str(tmp_path), "-c", str(tmp_path / "x.conf"))

    assert status == 2
    assert "not allowed with" in err


def test_missing_command_is_usage_error(capsys):
    status, out, err = run(capsys)

    assert status == 2
    assert "usage" in err


def test_unreachable_mysql_fails(capsys, closed_port):
    status, out, err = run(capsys, "user", "list", "--mysql-url", f"mysql://root@127.0.0.1:{closed_port}/tt")

    assert status == 1
    assert f"127.0.0.1:{closed_port}" in err


def test_invalid_mysql_url_fails(capsys):
    status, out, err = run(capsys, "user", "list", "--mysql-url", "postgres://x@y/z")

    assert status == 1
    assert "invalid MySQL URL" in err


def test_config_file_with_sqlite(capsys, tmp_path):
    conf = tmp_path / "dbproxyserver.conf"
    conf.write_text(f"DBEngine=sqlite\nSqliteFile={tmp_path / 'conf.db'}\n")

    added = run(capsys, "user", "add", "alice", "--password", "pw", "-c", str(conf))
    listed = run(capsys, "user", "list", "-c", str(conf))

    assert added[0] == 0
    assert (tmp_path / "conf.db").is_file()
    assert "alice" in listed[1]


def test_config_file_with_mysql(capsys, tmp_path, mysql_url):
    parts = urllib.parse.urlsplit(mysql_url)
    conf = tmp_path / "dbproxyserver.conf"
    conf.write_text(
        "DBInstances=teamtalk_master\n"
        f"teamtalk_master_host={parts.hostname}\n"
        f"teamtalk_master_port={parts.port}\n"
        f"teamtalk_master_dbname={parts.path.lstrip('/')}\n"
        f"teamtalk_master_username={parts.username}\n"
        f"teamtalk_master_password={parts.password or ''}\n"
        "teamtalk_master_maxconncnt=4\n"
    )

    initialized = run(capsys, "init-db", "-c", str(conf))
    added = run(capsys, "user", "add", "alice", "--password", "pw", "-c", str(conf))

    assert initialized[0] == 0
    assert f"{parts.hostname}:{parts.port}/" in initialized[1]
    assert added[0] == 0
    assert validate(["--mysql-url", mysql_url], "alice", "pw") is not None


def test_config_file_invalid(capsys, tmp_path):
    conf = tmp_path / "dbproxyserver.conf"
    conf.write_text("NoSuchKey=1\n")

    status, out, err = run(capsys, "user", "list", "-c", str(conf))

    assert status == 1
    assert "NoSuchKey" in err


def test_mysql_without_tables_asks_for_init_db(capsys, mysql_url):
    status, out, err = run(capsys, "user", "list", "--mysql-url", mysql_url)

    assert status == 1
    assert "teamtalk init-db" in err


def test_user_add_name_differing_in_case_fails(capsys, storage_args):
    run(capsys, "user", "add", "alice", "--password", "pw", *storage_args)

    status, out, err = run(capsys, "user", "add", "Alice", "--password", "other", *storage_args)
    listed = run(capsys, "user", "list", *storage_args)

    assert status == 1
    assert "cannot add user 'Alice': user 'alice' (id 1) already exists" in err
    assert "Alice" not in listed[1]


# ---------------------------------------------------------------------------
# Argument errors


def test_misspelt_option_reports_subcommand_usage(capsys, tmp_path):
    status, out, err = run(capsys, "user", "add", "dave", "--pasword", "x", "--data-dir", str(tmp_path))

    assert status == 2
    assert err.startswith("usage: teamtalk user add ")
    assert "teamtalk user add: error: unrecognized arguments: --pasword x (did you mean --password?)" in err
    assert not (tmp_path / "teamtalk.db").exists()


def test_unknown_argument_without_close_option(capsys, tmp_path):
    status, out, err = run(capsys, "user", "list", "--zzz", "--data-dir", str(tmp_path))

    assert status == 2
    assert err.startswith("usage: teamtalk user list ")
    assert "teamtalk user list: error: unrecognized arguments: --zzz\n" in err
    assert "did you mean" not in err


def test_unknown_positional_reports_subcommand_usage(capsys):
    status, out, err = run(capsys, "sample-config", "msfs", "extra")

    assert status == 2
    assert err.startswith("usage: teamtalk sample-config ")
    assert "unrecognized arguments: extra" in err
    assert out == ""


@pytest.mark.parametrize("role", ["route-server", "route_server"])
def test_sample_config_accepts_both_spellings(capsys, role):
    status, out, err = run(capsys, "sample-config", role)

    assert status == 0
    assert out.startswith("# routeserver.conf: settings of route_server.")
    assert err == ""


def test_sample_config_unknown_role(capsys):
    status, out, err = run(capsys, "sample-config", "routeserver")

    assert status == 2
    assert "unknown role 'routeserver'" in err
    assert "route-server" in err
    assert out == ""


def test_role_command_error_names_role(capsys):
    status, out, err = run(capsys, "route-server", "--set", "ListenPort=9000", "--set", "ListenPort=9001")

    assert status == 2
    assert err == "teamtalk route_server: command line: duplicate key 'ListenPort' (given twice with --set)\n"


def test_role_command_unknown_key_names_role(capsys):
    status, out, err = run(capsys, "route-server", "--set", "Foo=1")

    assert status == 2
    assert err == "teamtalk route_server: command line: unknown key 'Foo'\n"


# ---------------------------------------------------------------------------
# Output into a pipe that its reader closed


def run_into_closed_pipe(*argv: str, unbuffered: bool) -> subprocess.CompletedProcess:
    """Run the teamtalk command with stdout a pipe whose read end is closed before it starts.

    With ``unbuffered``, each print fails at once; otherwise the final flush does.
    """
    env = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "teamtalk", *argv], stdin=subprocess.DEVNULL,
                              stdout=write_end, stderr=subprocess.PIPE, env=env, timeout=60)
    finally:
        os.close(write_end)


@pytest.fixture
def data_with_group(tmp_path, capsys) -> list[str]:
    """A data directory with users alice and bob, and group 1 of both."""
    args = ["--data-dir", str(tmp_path / "data")]
    for name in ("alice", "bob"):
        assert main(["user", "add", name, "--password", "pw", *args]) == 0
    assert main(["group", "add", "team", "--creator", "alice", "--members", "bob", *args]) == 0
    capsys.readouterr()
    return args


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("command", [["user", "list"], ["group", "members", "1"]],
                         ids=["user-list", "group-members"])
def test_output_into_closed_pipe_exits_quietly(data_with_group, command, unbuffered):
    result = run_into_closed_pipe(*command, *data_with_group, unbuffered=unbuffered)

    assert result.returncode == EXIT_BROKEN_PIPE
    assert result.stderr == b""


def test_output_into_open_pipe_succeeds(data_with_group):
    result = subprocess.run([sys.executable, "-m", "teamtalk", "group", "members", "1", *data_with_group],
                            stdin=subprocess.DEVNULL, capture_output=True, timeout=60)

    assert result.returncode == 0
    assert b"alice" in result.stdout
    assert result.stderr == b""
