"""jaxr1: R1-style reinforcement learning (GRPO family) for Qwen2.5-VL in one JAX program."""
__version__ = "0.1.0"
