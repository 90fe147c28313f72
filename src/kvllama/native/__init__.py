"""llama.cpp handles (model, context, batch, sampler chain): the only ctypes code in kvllama."""
