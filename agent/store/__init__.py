"""Where the graph is kept: the `Store` protocol, the local journal and etcd."""
