"""Small facts about this host that the agent and the clients share.

Paths, processes, peers, sd_notify, backoff. Imports nothing else of unitsync.
"""
