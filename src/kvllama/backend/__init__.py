"""Backends: what the decode loop needs from a model (real llama.cpp, or a deterministic stub)."""
