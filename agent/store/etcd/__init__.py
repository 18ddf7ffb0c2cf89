"""The shared store: one graph for several agents, kept in etcd."""
