"""Float storage of a moment: the dtype the math runs in and the casts.

Moments are *computed* in at least float32 (``compute_dtype``) whatever they
are *stored* in (``mu_dtype``/``nu_dtype``, by default the parameter's dtype).
The second moment of a complex parameter is real (``|g|^2``), so it is stored
in the parameter's real counterpart (complex64 -> float32).
"""

from typing import Any

import jax
import jax.numpy as jnp


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


def store(x: jax.Array, dtype: Any) -> jax.Array:
  """``x`` rounded to a storage dtype. A dtype narrower than ``x``'s saturates
  at its largest finite value (a float16 ``nu`` holds at most 65504, not inf);
  into the same or a wider dtype ``x`` is only cast. NaN stays NaN."""
  big = float(jnp.finfo(dtype).max)
  if big >= jnp.finfo(x.dtype).max:
    return x.astype(dtype)
  if jnp.iscomplexobj(x):
    parts = jnp.clip(x.real, -big, big), jnp.clip(x.imag, -big, big)
    return jax.lax.complex(*parts).astype(dtype)
  return jnp.clip(x, -big, big).astype(dtype)
