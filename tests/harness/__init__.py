"""What the tests stand on: real clusters, crash disks, power-loss models, the console sessions
of the README and the docs."""
