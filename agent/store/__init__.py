"""Where the graph is kept: the `Store` protocol (`base`), the local journal and etcd.

A store owns the graph: it alone applies records to it. Nothing here serves a socket
(`tests/test_layers.py`).
"""
