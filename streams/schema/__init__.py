"""streams/schema."""
