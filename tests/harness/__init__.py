"""What the tests stand on: real clusters, crash disks, power-loss models, the README session."""
