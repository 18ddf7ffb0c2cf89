"""unitsync's client side: the wire protocol and a blocking client (no trio)."""

__version__ = "0.1.0"
