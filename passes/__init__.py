"""Passes: the registry, the PassManager and its instruments, one file per pass."""
