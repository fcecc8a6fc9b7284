"""Runnable examples: ``python -m adam_jax.examples.<name>``."""
