"""Float storage of a moment: the dtype the math runs in and the casts.

Moments are *computed* in at least float32 (``compute_dtype``) whatever they
are *stored* in (``mu_dtype``/``nu_dtype``, by default the parameter's dtype).
The second moment of a complex parameter is real (``|g|^2``), so it is stored
in the parameter's real counterpart (complex64 -> float32).

A moment stored in a narrower float is rounded stochastically by default
(:func:`store` with a ``key``): rounded to nearest, a bfloat16 second moment
cannot decay at :math:`\beta_2 = 0.999`, since the relative change 0.001 of
one step is below half a bfloat16 ulp (0.2-0.4%); rounded up or down with
probabilities that make the stored value unbiased, it decays on average at
the right rate. The random bits come from a counter-based hash of the step
count and the element's position (:func:`rounding_key`,
:func:`uniform_bits`), so a run is the same on every run and backend and no
PRNG key is needed.
"""

from typing import Any

import jax
import jax.numpy as jnp

from adam_jax._src import placement


def compute_dtype(dtype: Any) -> Any:
  """The dtype the math runs in: ``dtype`` widened to at least float32.

  (Written out rather than ``jnp.promote_types``, which refuses mixed
  categories under ``jax_numpy_dtype_promotion="strict"``.)
  """
  dtype = jnp.dtype(dtype)
  if jnp.finfo(dtype).bits >= 32:
    return dtype
  return jnp.dtype(jnp.float32)


def real_dtype(dtype: Any) -> Any:
  """float32 for complex64, float64 for complex128, else ``dtype`` itself."""
  return jnp.finfo(dtype).dtype


def read_back(x: jax.Array, dtype: Any) -> jax.Array:
  """A stored non-negative moment widened to ``dtype``, an inf (left by a
  square that overflowed) read as the largest finite value, so that the
  moment decays again instead of staying infinite. NaN stays NaN."""
  return jnp.minimum(x.astype(dtype), float(jnp.finfo(dtype).max))


def store(x: jax.Array, dtype: Any, key: jax.Array | None = None) -> jax.Array:
  """``x`` rounded to a storage dtype. A dtype narrower than ``x``'s saturates
  at its largest finite value (a float16 ``nu`` holds at most 65504, not inf);
  into the same or a wider dtype ``x`` is only cast. NaN stays NaN. With a
  ``key`` (:func:`rounding_key`), a real ``x`` is rounded to a narrower
  dtype stochastically (:func:`stochastic_round`), else to nearest."""
  big = float(jnp.finfo(dtype).max)
  if big >= jnp.finfo(x.dtype).max:
    return x.astype(dtype)
  if jnp.iscomplexobj(x):
    parts = jnp.clip(x.real, -big, big), jnp.clip(x.imag, -big, big)
    return jax.lax.complex(*parts).astype(dtype)
  x = jnp.clip(x, -big, big)
  if key is None:
    return x.astype(dtype)
  if x.dtype == jnp.float32 and jnp.dtype(dtype) == jnp.bfloat16:
    return _stochastic_bfloat16(x, random_bits(key, x))
  return stochastic_round(x, dtype, uniform_bits(key, x))


def _stochastic_bfloat16(x: jax.Array, bits: jax.Array) -> jax.Array:
  """float32 ``x`` rounded to bfloat16 stochastically, on its bits: a
  bfloat16 is a float32 with the low 16 bits zero, so adding 16 random bits
  to the magnitude's and truncating them rounds away from zero with
  probability equal to the truncated fraction (:func:`stochastic_round`'s
  rule, in three integer operations). NaN is kept as it is."""
  raw = jax.lax.bitcast_convert_type(x, jnp.uint32)
  raw = (raw + (bits >> 16)) & jnp.uint32(0xFFFF0000)
  rounded = jax.lax.bitcast_convert_type(raw, jnp.float32)
  return jnp.where(jnp.isnan(x), x, rounded).astype(jnp.bfloat16)


def _mix(h: jax.Array) -> jax.Array:
  """A 32-bit integer hash (the "lowbias32" finalizer): every input bit
  changes each output bit with probability close to 1/2."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x7FEB352D)
  h = h ^ (h >> 15)
  h = h * jnp.uint32(0x846CA68B)
  return h ^ (h >> 16)


def rounding_key(count: jax.Array, salt: int) -> jax.Array:
  """The hash key of one stored moment (``salt``: which moment) at step
  ``count``: a uint32 scalar."""
  c = jnp.asarray(count).astype(jnp.uint32)
  return _mix(c * jnp.uint32(0x9E3779B9) + jnp.uint32(salt * 0x85EBCA6B % 2**32))


def uniform_bits(key: jax.Array, like: jax.Array) -> jax.Array:
  """Uniform float32 values in [0, 1), one per element of ``like``, with 24
  bits (of :func:`random_bits`)."""
  return (random_bits(key, like) >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)


def random_bits(key: jax.Array, like: jax.Array) -> jax.Array:
  """32 random bits (uint32) per element of ``like``: the hash of ``key``
  and the element's position (its flat index)."""
  shape = tuple(like.shape)
  sharding = placement.typed_sharding(like)
  position = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in range(len(shape) - 1, -1, -1):
    iota = jax.lax.broadcasted_iota(jnp.uint32, shape, axis, out_sharding=sharding)
    position = position + iota * jnp.uint32(stride % 2**32)
    stride *= shape[axis]
  return _mix(position ^ key)


def stochastic_round(x: jax.Array, dtype: Any, u: jax.Array) -> jax.Array:
  """``x`` (finite values within ``dtype``'s range) rounded to ``dtype``:
  to the neighbour on the far side of ``x`` with probability ``|x - y| /
  |other - y|`` where ``u`` (uniform in [0, 1)) is below it, else to
  the nearest value ``y``. So the expected stored value is ``x`` itself.
  NaN and infinities are stored as they are."""
  y = x.astype(dtype)
  near = y.astype(x.dtype)
  away = jnp.where(near > x, -jnp.inf, jnp.inf).astype(dtype)
  other = jnp.nextafter(y, away)
  far = other.astype(x.dtype)
  p = (x - near) / (far - near)  # in [0, 1/2]; NaN for non-finite x
  return jnp.where((u.astype(p.dtype) < p) & jnp.isfinite(far), other, y)
