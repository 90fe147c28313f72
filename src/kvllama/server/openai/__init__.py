"""The OpenAI API family: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``, ``/v1/models``.

``schemas`` (request bodies), ``routes`` (handlers), ``rendering`` (the reply
reducer's deltas as SSE chunks or one JSON body), ``choices`` (``n`` choices of
one request), ``logprobs`` (OpenAI's log-probability shapes).
"""
