"""The server's own endpoints: tokenize, cache lookup, sessions, LoRA adapters, status.

``routes`` (tokenize/detokenize, ``/cache/lookup``, ``/sessions``), ``lora``
(llama-server's ``/lora-adapters``), ``status`` (``/status``), ``status_page``
(the page at ``/``).
"""
