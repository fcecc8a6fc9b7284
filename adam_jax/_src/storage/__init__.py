"""How a moment is stored: float dtypes (``floats``) or 8 bits (``int8``).

A step reads each stored moment as an array in the compute dtype
(:func:`decoded`), runs the Adam rule, and stores the new moment in the form
it came in (:func:`encoded`). :func:`first_moment_dtype` and
:func:`second_moment_dtype` decide that form for a parameter from the
``mu_dtype``/``nu_dtype`` options, and :func:`zeros` makes the moment of a new
state, laid out like its parameter.
"""

import math
from typing import Any

import jax
from jax.experimental.shard_alike import shard_alike
import jax.numpy as jnp

from adam_jax._src import placement
from adam_jax._src.storage import int8
from adam_jax._src.storage.floats import compute_dtype as compute_dtype
from adam_jax._src.storage.floats import read_back as read_back
from adam_jax._src.storage.floats import real_dtype as real_dtype
from adam_jax._src.storage.floats import store as store
from adam_jax._src.storage.int8 import INT8 as INT8
from adam_jax._src.storage.int8 import INT8_MIN_SIZE as INT8_MIN_SIZE
from adam_jax._src.storage.int8 import QuantizedMoment as QuantizedMoment
from adam_jax._src.storage.int8 import is_quantized as is_quantized


def _int8_or_float32(p: Any, min_size: Any) -> Any:
  """8-bit storage for leaves of at least ``min_size`` elements."""
  if isinstance(min_size, jax.core.Tracer):
    raise TypeError(
      "int8_min_size decides the state's shapes, so it cannot be traced:"
      " with optax.inject_hyperparams pass"
      " static_args=('int8_min_size',), or call init outside jit."
    )
  if math.prod(jnp.shape(p)) >= min_size:
    return INT8
  return jnp.dtype(jnp.float32)


def first_moment_dtype(mu_dtype: Any, p: Any, min_size: Any) -> Any:
  """How the first moment of parameter ``p`` is stored under ``mu_dtype``:
  a dtype, or ``INT8``. ``None`` keeps the parameter's dtype."""
  if mu_dtype is None:
    return jnp.result_type(p)
  if mu_dtype == INT8:
    if jnp.iscomplexobj(p):
      raise TypeError(
        f"mu_dtype='int8' cannot store the first moment of a"
        f" {jnp.result_type(p)} parameter: use a complex dtype (or None)."
      )
    return _int8_or_float32(p, min_size)
  if jnp.iscomplexobj(p) != jnp.issubdtype(mu_dtype, jnp.complexfloating):
    raise TypeError(
      f"mu_dtype={jnp.dtype(mu_dtype).name} cannot store the first"
      f" moment of a {jnp.result_type(p)} parameter: use a"
      f" {'complex' if jnp.iscomplexobj(p) else 'real'} dtype."
    )
  return mu_dtype


def second_moment_dtype(nu_dtype: Any, p: Any, min_size: Any) -> Any:
  """How the second moment of parameter ``p`` is stored under ``nu_dtype``;
  ``None`` keeps the parameter's real dtype."""
  if nu_dtype is None:
    return real_dtype(jnp.result_type(p))
  if nu_dtype == INT8:
    return _int8_or_float32(p, min_size)
  return nu_dtype


def kind(x: Any) -> str:
  """A stored moment's storage: ``"int8"`` or its dtype's name."""
  return INT8 if is_quantized(x) else jnp.result_type(x).name


def zeros(like: Any, dtype: Any, signed: bool) -> Any:
  """A zero moment for a parameter like ``like``, stored in ``dtype`` (a
  :class:`QuantizedMoment` for ``"int8"``), laid out like ``like``: on its
  sharding when ``like`` is a committed array, and tied to its sharding
  when ``like`` is traced (see :func:`follow`)."""
  z: Any
  where = placement.placement(like)
  if isinstance(dtype, str) and dtype == INT8:
    z = int8.quantized_zeros(tuple(jnp.shape(like)), signed, where)
  elif where is None:
    z = jnp.zeros_like(like, dtype=dtype)
  else:
    z = jnp.zeros(jnp.shape(like), dtype, device=where)
  return follow(like, z)


def follow(like: Any, z: Any) -> Any:
  """``z`` (an array of ``like``'s shape or a :class:`QuantizedMoment` of
  it) tied to ``like``'s sharding when ``like`` is traced in a process with
  several devices.

  Zeros do not depend on the parameter's data, so under ``jit`` XLA's
  sharding propagation would leave them unconstrained and place the whole
  state on one device (optax #548). ``shard_alike`` puts them in one
  sharding group with the parameter (and the 8-bit scales with one value
  per block of the parameter), so they are laid out like it.
  """
  if not isinstance(like, jax.core.Tracer) or jax.device_count() == 1:
    return z
  if is_quantized(z):
    return int8.follow(like, z)
  return shard_alike(like, z)[1]


def decoded(x: Any) -> Any:
  """A stored moment as an array: 8-bit ones decoded to float32."""
  return int8.dequantize(x) if is_quantized(x) else x


def encoded(new: list[Any], stored: list[Any]) -> list[Any]:
  """The new moments ``new`` (already in their float storage dtype, or
  float32 for 8-bit ones) stored as ``stored`` are: 8-bit ones quantized
  together (their blocks' scales in one reduction), the others as they are."""
  coded = [i for i, x in enumerate(stored) if is_quantized(x)]
  if not coded:
    return new
  out = list(new)
  quantized = int8.quantize([new[i] for i in coded], [stored[i].signed for i in coded])
  for i, q in zip(coded, quantized, strict=True):
    out[i] = q
  return out


def settled(x: jax.Array, stored: Any, one: jax.Array) -> jax.Array:
  """The new moment ``x`` (in the compute dtype) as the step reads it.

  An 8-bit moment's new value is read three times: by the reduction that
  finds its blocks' scales, by the encoder and by the update. XLA:CPU gives
  each of them a loop of its own and would copy the decoding and the moment
  arithmetic into all three; dividing by ``one`` (1, but not known to XLA to
  be 1: ``rule.Clock.one``) makes XLA compute ``x`` once into a buffer that
  the three read, since XLA does not copy a division into several consumers. Dividing
  by an exact 1 changes no value. Other storage is read back as it is.
  """
  if not is_quantized(stored):
    return x
  return x / one.astype(x.dtype)


def logical(x: Any) -> Any:
  """What a stored moment stands for: a float32 array of its shape for a
  :class:`QuantizedMoment`, else ``x`` itself."""
  if is_quantized(x):
    return jax.ShapeDtypeStruct(x.shape, jnp.float32)
  return x
