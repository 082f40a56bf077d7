"""Interop with the checkpoint formats of other toolkits."""
