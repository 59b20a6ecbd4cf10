"""streams/worker."""
