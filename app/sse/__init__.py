"""app/sse."""
