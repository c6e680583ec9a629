"""Triton kernels, one module per op; imported lazily by predkern.ops (Triton may be absent)."""
