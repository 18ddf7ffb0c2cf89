"""The trio client, and the one hand-written source of both clients (`client.py`).

Edit here; `_sync/` is generated from it (`python -m unitsync.client.unasync`). Imports trio
(through `_backends.trio`): reach it as `unitsync.client.AsyncClient`, from trio programs.
"""
