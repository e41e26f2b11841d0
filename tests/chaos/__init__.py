"""Chaos tests: real services under faults (killed workers, lost Redis data, floods)."""
