"""Counting XLA compilations through JAX's public monitoring events.

A jitted function recompiles when the avals *or the shardings* of its inputs
change; ``chex.assert_max_traces`` sees the first kind only (a new sharding is
not a new trace), so the tests that claim "one compile" for sharded or
committed state count compilations here instead.
"""

import contextlib

import jax

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def compiles():
  """Yields a list that gets one entry per XLA compilation inside the block."""
  seen: list[str] = []

  def listen(event, duration, **kwargs):
    del duration, kwargs
    if event == COMPILE_EVENT:
      seen.append(event)

  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    yield seen
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
