"""The pure core of the agent: the state machine, the graph, its records and views.

No trio, no I/O: everything here runs the same in a replay and in a test.
"""
