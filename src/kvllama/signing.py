"""Signatures of thinking text, so a client cannot hand back reasoning the model never wrote.

Anthropic's API returns each thinking block with an opaque ``signature`` and
refuses a later turn whose thinking block was altered. kvllama does the same
with an HMAC-SHA256 of the thinking text's UTF-8 bytes under a key the
operator configures; without a key there is no signature ("").
"""

from __future__ import annotations

import base64
import hashlib
import hmac


def sign_thinking(key: bytes | None, text: str) -> str:
    """Base64 HMAC-SHA256 of ``text`` (UTF-8) under ``key``; "" when there is no key."""
    if not key:
        return ""
    digest = hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def verify_thinking(key: bytes | None, text: str, signature: str) -> bool:
    """True when ``signature`` is what :func:`sign_thinking` gives for ``text``.

    Constant-time, so the comparison leaks nothing about a correct signature.
    Without a key the only valid signature is "" (nothing can be verified).
    """
    if not isinstance(signature, str):
        return False
    expected = sign_thinking(key, text)
    return hmac.compare_digest(expected.encode("ascii"), signature.encode("utf-8"))
