"""Named voices: context segments Mimi-encoded once, stored in a directory, used by name."""
