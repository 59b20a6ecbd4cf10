"""streams/kafka."""
