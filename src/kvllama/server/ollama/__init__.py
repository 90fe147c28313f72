"""The Ollama API family under ``/api/``: generate, chat, embed, tags, show, ps, version.

``routes`` (handlers), ``rendering`` (its request bodies and its NDJSON or JSON replies).
"""
