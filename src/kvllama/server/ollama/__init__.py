"""The Ollama API family under ``/api/``: generate, chat, embed, tags, show, ps, version.

``schemas`` (request bodies), ``routes`` (handlers), ``rendering`` (its NDJSON or JSON replies).
"""
