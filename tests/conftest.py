"""Shared test configuration.

Every test runs with strict dtype promotion and rank promotion "raise" (as
equinox does), so the library never relies on implicit promotion. optax itself
is not written for strict promotion (``0.999 ** count`` mixes a Python float
with int32), so reference computations with optax run inside ``optax_mode()``.
"""

import contextlib

import jax
import pytest


@pytest.fixture(autouse=True)
def _strict_jax():
  with jax.numpy_dtype_promotion("strict"), jax.numpy_rank_promotion("raise"):
    yield


@contextlib.contextmanager
def optax_mode():
  """Standard promotion, for running optax as the reference."""
  with jax.numpy_dtype_promotion("standard"):
    yield


@pytest.fixture
def x64():
  """Enables float64 for one test and restores the previous setting."""
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  try:
    yield
  finally:
    jax.config.update("jax_enable_x64", previous)
