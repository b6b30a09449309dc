"""A TeamTalk-compatible instant-messaging server written on Trio."""

__version__ = "0.1.0"
