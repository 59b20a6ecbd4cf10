"""streams/dlq."""
