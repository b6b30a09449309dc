"""route_server role."""
