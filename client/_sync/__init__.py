"""The blocking client, generated from `_async/` (`python -m unitsync.client.unasync`).

Do not edit its modules: edit their source in `_async/` and regenerate. Never imports trio.
"""
