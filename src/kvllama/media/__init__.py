"""Images and audio in prompts: projectors (llama.cpp's mtmd), media inputs, and prompt layouts."""
