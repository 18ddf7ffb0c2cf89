"""The unitsync agent: a trio server that owns the unit graph and keeps it durable.

core/         the pure core: state machine, graph, records, views (no trio, no I/O)
store/        where the graph is kept and who applies changes to it: the `Store`
              protocol (`base`), the local journal, etcd
serve/        serving the socket: listening, one task per connection, limits, activation
service       what each request does, through one seam to the store
starting      the start wait: until the unit is ready, then start it
holds         runs held by `run` connections
waiters       wake-ups of blocked starts
broadcast     changes pushed to watchers
boots         which boot of the workspace this is
log_throttle  rate-limited logging
main          `unitsync agent`: the process, its signals
"""
