"""Chat messages and templates."""
