"""app/fanout."""
