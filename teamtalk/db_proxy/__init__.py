"""db_proxy_server: storage requests of msg_servers (users, sessions, messages, counters)."""

from teamtalk.db_proxy.server import DbProxyServer

__all__ = ["DbProxyServer"]
