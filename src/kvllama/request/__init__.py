"""What a client asks for: one frozen :class:`GenerationRequest`, built once at the edge.

Every way in (``Engine.infer`` and ``Engine.chat`` keyword arguments, the
OpenAI, Anthropic and Ollama bodies, the scale-out ingress) builds this one
object, and the engine and the decode loop take it. Options are converted
here once and each concern is checked in one place: the syntax of a value
here (or in an HTTP schema), the limits that depend on a model at admission
(``api/admission.py``).
"""

from kvllama.chat.prompt import ChatInput
from kvllama.request.generation import GenerationRequest, Prompt
from kvllama.request.options import RequestOptions, check_adapter_scale, check_session_id

__all__ = ["ChatInput", "GenerationRequest", "Prompt", "RequestOptions", "check_adapter_scale",
           "check_session_id"]
