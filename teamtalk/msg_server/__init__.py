"""msg_server role."""
