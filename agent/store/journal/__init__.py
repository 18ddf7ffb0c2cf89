"""The local store: an fsync'd append-only journal and its snapshot in the state dir."""
