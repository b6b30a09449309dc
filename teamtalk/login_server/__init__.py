"""login_server role."""
