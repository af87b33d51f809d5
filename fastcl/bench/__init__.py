"""Measuring fastcl: `fastcl speed` (fused vs pure-PyTorch NT-Xent) and the timing and peak-memory
helpers that it and benchmarks/ share."""
