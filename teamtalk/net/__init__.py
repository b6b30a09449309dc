"""Trio networking shared by every role: connections, listeners, links, shutdown."""
