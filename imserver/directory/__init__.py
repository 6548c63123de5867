"""The organisation directory: units in a five-level tree, members, admins."""
