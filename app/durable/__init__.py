"""app/durable."""
