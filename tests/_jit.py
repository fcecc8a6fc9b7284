"""Counting XLA compilations through JAX's public monitoring events.

A jitted function recompiles when the avals *or the shardings* of its inputs
change; ``chex.assert_max_traces`` sees the first kind only (a new sharding is
not a new trace), so the tests that claim "one compile" for sharded or
committed state count compilations here instead: an XLA compilation, or an
executable read back from the persistent compilation cache (which the test
workers share, see ``tests/conftest.py``).
"""

import contextlib

import jax

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


@contextlib.contextmanager
def compiles():
  """Yields a list that gets one entry per compilation inside the block."""
  seen: list[str] = []

  def compiled(event, duration, **kwargs):
    del duration, kwargs
    if event == COMPILE_EVENT:
      seen.append(event)

  def read_back(event, **kwargs):
    del kwargs
    if event == CACHE_HIT_EVENT:
      seen.append(event)

  jax.monitoring.register_event_duration_secs_listener(compiled)
  jax.monitoring.register_event_listener(read_back)
  try:
    yield seen
  finally:
    jax.monitoring.unregister_event_duration_listener(compiled)
    jax.monitoring.unregister_event_listener(read_back)
