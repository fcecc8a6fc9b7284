"""How a moment is stored: float dtypes (``floats``), 8 bits (``int8``), 4
bits (``int4``) or, for the second moment, factored (``factored``).

A step reads each stored moment as an array in the compute dtype
(:func:`decoded`), runs the Adam rule, and stores the new moment in the form
it came in (:func:`encoded`). :func:`first_moment_dtype` and
:func:`second_moment_dtype` decide that form for a parameter from the
``mu_dtype``/``nu_dtype`` options, and :func:`zeros` makes the moment of a new
state, laid out like its parameter. The three compact forms (8-bit, 4-bit,
factored) are "coded" moments (:func:`is_coded`): objects of a few arrays
that the step decodes to float32.
"""

import math
from typing import Any

import jax
from jax.experimental.shard_alike import shard_alike
import jax.numpy as jnp

from adam_jax._src import placement
from adam_jax._src.storage import factored
from adam_jax._src.storage import int4
from adam_jax._src.storage import int8
from adam_jax._src.storage.factored import FACTORED as FACTORED
from adam_jax._src.storage.factored import FactoredMoment as FactoredMoment
from adam_jax._src.storage.floats import compute_dtype as compute_dtype
from adam_jax._src.storage.floats import read_back as read_back
from adam_jax._src.storage.floats import real_dtype as real_dtype
from adam_jax._src.storage.floats import rounding_key as rounding_key
from adam_jax._src.storage.floats import store as store
from adam_jax._src.storage.int4 import INT4 as INT4
from adam_jax._src.storage.int4 import Int4Moment as Int4Moment
from adam_jax._src.storage.int8 import INT8 as INT8
from adam_jax._src.storage.int8 import INT8_MIN_SIZE as INT8_MIN_SIZE
from adam_jax._src.storage.int8 import QuantizedMoment as QuantizedMoment
from adam_jax._src.storage.int8 import is_quantized as is_quantized

# The storages that code a moment in a few arrays (small leaves keep float32).
CODED = (INT8, INT4, FACTORED)


def is_coded(x: Any) -> bool:
  """Whether ``x`` is a coded moment (8-bit, 4-bit or factored)."""
  return isinstance(x, (QuantizedMoment, Int4Moment, FactoredMoment))


def _coded_or_float32(code: str, p: Any, min_size: Any) -> Any:
  """``code`` for leaves of at least ``min_size`` elements (and, factored,
  at least two axes), float32 for the others."""
  if isinstance(min_size, jax.core.Tracer):
    raise TypeError(
      "int8_min_size decides the state's shapes, so it cannot be traced:"
      " with optax.inject_hyperparams pass"
      " static_args=('int8_min_size',), or call init outside jit."
    )
  shape = jnp.shape(p)
  if code == FACTORED and len(shape) < 2:
    return jnp.dtype(jnp.float32)
  if math.prod(shape) >= min_size:
    return code
  return jnp.dtype(jnp.float32)


def first_moment_dtype(mu_dtype: Any, p: Any, min_size: Any) -> Any:
  """How the first moment of parameter ``p`` is stored under ``mu_dtype``:
  a dtype, ``INT8`` or ``INT4``. ``None`` keeps the parameter's dtype."""
  if mu_dtype is None:
    return jnp.result_type(p)
  if mu_dtype in (INT8, INT4):
    if jnp.iscomplexobj(p):
      raise TypeError(
        f"mu_dtype={mu_dtype!r} cannot store the first moment of a"
        f" {jnp.result_type(p)} parameter: use a complex dtype (or None)."
      )
    return _coded_or_float32(mu_dtype, p, min_size)
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
  if nu_dtype in CODED:
    return _coded_or_float32(nu_dtype, p, min_size)
  return nu_dtype


def kind(x: Any) -> str:
  """A stored moment's storage: ``"int8"``, ``"int4"``, ``"factored"`` or
  its dtype's name."""
  if is_quantized(x):
    return INT8
  if int4.is_int4(x):
    return INT4
  if factored.is_factored(x):
    return FACTORED
  return jnp.result_type(x).name


def zeros(like: Any, dtype: Any, signed: bool) -> Any:
  """A zero moment for a parameter like ``like``, stored in ``dtype`` (a
  coded moment for ``"int8"``, ``"int4"`` and ``"factored"``), laid out
  like ``like``: on its sharding when ``like`` is a committed array, and
  tied to its sharding when ``like`` is traced (see :func:`follow`)."""
  z: Any
  where = placement.placement(like)
  shape = tuple(jnp.shape(like))
  if isinstance(dtype, str) and dtype == INT8:
    z = int8.quantized_zeros(shape, signed, where)
  elif isinstance(dtype, str) and dtype == INT4:
    z = int4.zeros(shape, signed, where)
  elif isinstance(dtype, str) and dtype == FACTORED:
    z = factored.zeros(shape, where)
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
  if int4.is_int4(z):
    return int4.follow(like, z)
  if factored.is_factored(z):
    return factored.follow(like, z)
  return shard_alike(like, z)[1]


def decoded(x: Any) -> Any:
  """A stored moment as an array: coded ones decoded to float32."""
  return x.dequantize() if is_coded(x) else x


def encoded(
  new: list[Any], stored: list[Any], coded: dict[int, Any] | None = None
) -> list[Any]:
  """The new moments ``new`` (already in their float storage dtype, or
  float32 for coded ones) stored as ``stored`` are: 8-bit ones quantized
  together (their blocks' scales in one reduction), 4-bit and factored ones
  each on its own, the others as they are. ``coded`` holds, by index, those
  that :func:`settled` already encoded."""
  ready = {i: c for i, c in (coded or {}).items() if c is not None}
  out = list(new)
  eight = [i for i, x in enumerate(stored) if is_quantized(x)]
  if eight:
    quantized = int8.quantize(
      [new[i] for i in eight], [stored[i].signed for i in eight]
    )
    for i, q in zip(eight, quantized, strict=True):
      out[i] = q
  for i, x in enumerate(stored):
    if i in ready:
      out[i] = ready[i]
    elif int4.is_int4(x):
      out[i] = int4.quantize(new[i], x.signed)
    elif factored.is_factored(x):
      out[i] = factored.factored(new[i])
  return out


def settled(x: jax.Array, stored: Any, one: jax.Array) -> tuple[jax.Array, Any]:
  """The new moment ``x`` (in the compute dtype) as the step reads it, and
  its stored form where reading it needed that (else None).

  An 8-bit moment's new value is read three times: by the reduction that
  finds its blocks' scales, by the encoder and by the update. XLA:CPU gives
  each of them a loop of its own and would copy the decoding and the moment
  arithmetic into all three; dividing by ``one`` (1, but not known to XLA to
  be 1: ``rule.Clock.one``) makes XLA compute ``x`` once into a buffer that
  the three read, since XLA does not copy a division into several
  consumers. Dividing by an exact 1 changes no value; a 4-bit moment is read
  the same way.

  A factored second moment is read as what it stores: the reconstruction
  from the means of the new moment, as Adafactor's step reads it (the means
  are returned, to be stored as they are). Other storage is read back as it
  is.
  """
  if factored.is_factored(stored):
    means = factored.factored(x)
    return factored.dequantize(means), means
  if not (is_quantized(stored) or int4.is_int4(stored)):
    return x, None
  return x / one.astype(x.dtype), None


def logical(x: Any) -> Any:
  """What a stored moment stands for: a float32 array of its shape for a
  coded moment, else ``x`` itself."""
  if is_coded(x):
    return jax.ShapeDtypeStruct(x.shape, jnp.float32)
  return x
