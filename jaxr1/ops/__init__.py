"""Numerical kernels shared by the models (attention, norms, rotary embeddings)."""
