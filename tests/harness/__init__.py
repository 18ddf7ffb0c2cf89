"""What the tests stand on: real clusters, crash disks, power-loss models, the console sessions
of the README and the docs; real hosts as network namespaces (`netns`), a workspace of etcd
members and agents on them (`hosts`), and a Jepsen-style checker of what clients were told
against etcd's own history (`history`)."""
