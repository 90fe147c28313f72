"""The Python facade (Engine) and the stream handles it returns."""
