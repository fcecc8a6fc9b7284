"""Where optimizer state lives: the shardings a new state leaf takes.

Every moment is laid out like its parameter. Eagerly, ``init`` places a
moment on its parameter's sharding; under ``jit`` it ties the moment to the
parameter (``storage.follow``). The helpers here read an array's sharding and
build the ``NamedSharding`` s that a jitted step returns, so that a state made
by ``init`` and one returned by a step compile to the same executable.
"""

import itertools
import math
from typing import Any

import jax
from jax.experimental.shard_alike import shard_alike
from jax.experimental.xla_metadata import set_xla_metadata
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def placement(x: Any) -> Any:
  """Where a moment of ``x`` goes: ``x``'s sharding when ``x`` is an array
  committed to it (a ``NamedSharding`` spelled as a jitted step returns it,
  see :func:`named`), else None (the default placement; jit keeps it as
  uncommitted as the parameters, so a step's output state compiles the same
  as ``init``'s)."""
  if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) and x.committed:
    sharding = x.sharding
    if isinstance(sharding, NamedSharding):
      return named(sharding.mesh, list(sharding.spec))
    return sharding
  return None


def named(mesh: Any, spec: list[Any]) -> NamedSharding:
  """``NamedSharding(mesh, P(*spec))`` without trailing Nones: a jitted step
  returns specs in that form, and jit's cache tells ``P("x", None)`` from
  ``P("x")`` (a state placed with the former would compile the step twice)."""
  while spec and spec[-1] is None:
    spec = spec[:-1]
  return NamedSharding(mesh, P(*spec))


def on(sharding: NamedSharding, spec: P) -> NamedSharding:
  """``spec`` on ``sharding``'s mesh."""
  return NamedSharding(sharding.mesh, spec)


def shards(sharding: Any, entry: Any) -> int:
  """How many pieces a ``PartitionSpec`` entry (None, an axis name or a
  tuple of them) cuts its dimension into on ``sharding``'s mesh."""
  if entry is None:
    return 1
  names = entry if isinstance(entry, tuple) else (entry,)
  return math.prod(sharding.mesh.shape[n] for n in names)


def typed_sharding(x: Any) -> Any:
  """``x``'s sharding when its type carries one (an array on a mesh with
  explicit axes, e.g. from ``jax.make_mesh``'s default), else None (XLA
  propagates shardings itself)."""
  sharding = getattr(jax.typeof(x), "sharding", None)
  if not isinstance(sharding, NamedSharding) or sharding.mesh.empty:
    return None
  explicit = jax.sharding.AxisType.Explicit
  return sharding if explicit in sharding.mesh.axis_types else None


def scalar(params: Any, value: Any, dtype: Any) -> jax.Array:
  """A scalar of state placed as :func:`counter` places the step count."""
  z = jnp.asarray(value, dtype)
  first = next(iter(jax.tree.leaves(params)), None)
  sharding = placement(first)
  if isinstance(sharding, NamedSharding):
    return jax.device_put(z, NamedSharding(sharding.mesh, P()))
  return z


def counter(params: Any) -> jax.Array:
  """A zero int32 step counter placed where a jitted step returns it:
  replicated on the parameters' mesh when they are committed to one (so the
  step does not compile a second time for the counter's placement)."""
  return scalar(params, 0, jnp.int32)


_ties = itertools.count()


def tie(like: jax.Array, z: jax.Array, typed: Any = None) -> jax.Array:
  """Zeros like ``z`` laid out like ``like`` under ``jit``: ``shard_alike``
  in a sharding group of its own, or on a mesh with explicit axes, the
  sharding ``typed`` their type carries.

  A bare ``shard_alike(like, z)`` joins every other one of the same shapes
  in the function: jax caches one lowering, and so one group id, per
  shapes, and XLA merges equal zero constants, and with them their groups.
  A moment would then take the layout of another parameter of its shape.
  A distinct metadata entry gives each call its own lowering, and zeros
  broadcast from a scalar that passes an optimization barrier with ``like``
  are a value of their own. The barrier also keeps ``like`` an input of the
  jitted function: with no input on the mesh, ``jit`` could not place the
  zeros of an explicit sharding (it asks for ``jax.set_mesh``)."""
  with set_xla_metadata(adam_jax_tie=next(_ties)):
    _, zero = jax.lax.optimization_barrier((like, jnp.zeros((), z.dtype)))
    if typed is not None:
      return zero + jnp.zeros(jnp.shape(z), z.dtype, out_sharding=typed)
    return shard_alike(like, jnp.broadcast_to(zero, jnp.shape(z)))[1]
