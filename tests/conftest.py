"""Shared test configuration.

Every test runs with strict dtype promotion and rank promotion "raise" (as
equinox does), so the library never relies on implicit promotion. optax itself
is not written for strict promotion (``0.999 ** count`` mixes a Python float
with int32), so reference computations with optax run inside ``optax_mode()``.
"""

import contextlib
import os
import shutil
import tempfile

# Under pytest-xdist the workers already share out the cores: each keeps XLA
# to one thread, so that their thread pools do not compete for the same cores.
# XLA reads the flags when the backend starts, at the first computation,
# after this runs.
if os.environ.get("PYTEST_XDIST_WORKER"):
  os.environ["XLA_FLAGS"] = " ".join(
    [
      os.environ.get("XLA_FLAGS", ""),
      "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    ]
  ).strip()

import chex
from hypothesis import settings
import jax
import pytest

# pytest-xdist workers share one persistent compilation cache, a temporary
# directory that the controller makes (workers inherit its environment) and
# removes at the end: what one worker compiled, the other reads back.
# tests/_jit.py counts a read back as a compilation too.
JIT_CACHE = "ADAM_JAX_TEST_JIT_CACHE"
if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get(JIT_CACHE):
  jax.config.update("jax_compilation_cache_dir", os.environ[JIT_CACHE])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_configure(config):
  if not os.environ.get("PYTEST_XDIST_WORKER") and getattr(
    config.option, "numprocesses", None
  ):
    config._jit_cache = tempfile.mkdtemp(prefix="adam_jax_jit_")
    os.environ[JIT_CACHE] = config._jit_cache


def pytest_unconfigure(config):
  path = getattr(config, "_jit_cache", None)
  if path:
    os.environ.pop(JIT_CACHE, None)
    shutil.rmtree(path, ignore_errors=True)


def pytest_collection_modifyitems(items):
  """Slow tests first (a stable sort keeps the rest in file order): pytest-xdist
  hands tests out in this order, so the minute-long docs build and subprocesses
  start while there is other work to balance them, not at the end."""
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)


# Property tests explore new examples on every run unless told otherwise; CI
# must be reproducible, so the default profile is derandomized (a fixed seed
# per test). `pytest --hypothesis-profile=explore` searches afresh.
settings.register_profile("default", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile("default")

# Tests that need 8 simulated devices run in their own process (XLA_FLAGS must
# be set before jax is imported): tests/suites/test_multidevice.py starts it.
MULTIDEVICE = "ADAM_JAX_MULTIDEVICE"
collect_ignore = [] if os.environ.get(MULTIDEVICE) == "1" else ["suites/multidevice"]


@pytest.fixture(autouse=True)
def _strict_jax():
  with jax.numpy_dtype_promotion("strict"), jax.numpy_rank_promotion("raise"):
    yield


@pytest.fixture(autouse=True)
def _fresh_trace_counts():
  """``chex.assert_max_traces`` counts traces per function definition site;
  each test (and each parametrization) starts from zero."""
  chex.clear_trace_counter()
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
