"""The leader-follower cluster: pure rules (state, replication), gRPC I/O (transport, service), driver (node)."""
