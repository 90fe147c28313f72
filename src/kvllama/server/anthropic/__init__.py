"""The Anthropic API family: ``/v1/messages`` and ``/v1/messages/count_tokens``.

``schemas`` (request bodies), ``routes`` (handlers), ``rendering`` (typed SSE
events or one Message body).
"""
