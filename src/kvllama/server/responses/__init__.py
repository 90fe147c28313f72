"""The OpenAI Responses API: ``/v1/responses`` (create, stream, retrieve, delete, input items), with
``previous_response_id`` continued exactly from the stored transcript and served warm."""
