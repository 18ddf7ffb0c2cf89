"""The unitsync agent: a trio server that owns the unit graph and its journal."""
