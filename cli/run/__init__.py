"""`unitsync sync run`: the supervisor of a command, its readiness and its hold on the unit."""
