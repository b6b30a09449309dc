import secrets

from teamtalk import cli
from tests.conftest import _drop_mysql_database


def test_init_db_creates_missing_mysql_database(mysql_server, capsys):
    name = f"tt_test_{secrets.token_hex(6)}"
    url = mysql_server.url(name)
    try:
        assert cli.main(["user", "list", "--mysql-url", url]) == 1
        assert f"no database {name!r}" in capsys.readouterr().err

        assert cli.main(["init-db", "--mysql-url", url]) == 0
        assert cli.main(["init-db", "--mysql-url", url]) == 0
        assert cli.main(["user", "add", "alice", "--password", "pw", "--mysql-url", url]) == 0
        assert "alice" in capsys.readouterr().out
    finally:
        _drop_mysql_database(mysql_server, name)
