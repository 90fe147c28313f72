"""Loaded models and the embedded default model."""
