"""How a moment is computed and stored: dtypes, hyperparameter casts, EMAs.

Moments are *computed* in at least float32 (``compute_dtype``) whatever they
are *stored* in (``mu_dtype``/``nu_dtype``, by default the parameter's dtype).
The second moment of a complex parameter is real (``|g|^2``), so it is stored
in the parameter's real counterpart (complex64 -> float32).
"""

from __future__ import annotations

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


def cast_hyperparameter(x: Any, dtype: Any) -> Any:
  """Python numbers stay Python (weak-typed, so ``1 - b`` is exact in f64 and
  then rounded once, as in optax); arrays and traced values become ``dtype``
  (so a bfloat16 ``b2`` from ``inject_hyperparams`` is widened before use)."""
  if isinstance(x, (int, float)) and not isinstance(x, bool):
    return x
  return jnp.asarray(x).astype(dtype)


def ema_coefficients(b: Any, t: jax.Array) -> tuple[Any, Any, Any]:
  """Returns ``(keep, rate, bias_correction)`` of an exponential moving average.

  The moment update is ``m_t = keep * m_{t-1} + rate * x_t`` and the bias
  corrected moment is ``m_t / bias_correction``, with
  ``keep = b``, ``rate = 1 - b`` and ``bias_correction = 1 - b**t``
  (Kingma & Ba, 2015, Algorithm 1).

  For an array ``b`` equal to 1 (only reachable through a rounded low-precision
  hyperparameter, e.g. ``bfloat16(0.999) == 1``) all three are replaced by
  their limits as ``b -> 1``: ``keep = 1 - 1/t``, ``rate = 1/t`` and
  ``bias_correction = 1``, so the stored moment is the running mean of ``x``,
  which is exactly the limit of the bias-corrected EMA. Python numbers are
  validated to lie in [0, 1) and take the plain branch (no extra ops).

  Args:
    b: decay rate, a Python number or an array already in ``t``'s dtype.
    t: the step count (after increment), as a float array of at least
      float32 precision.
  """
  if isinstance(b, (int, float)):
    return b, 1 - b, 1 - b**t
  is_one = b == 1
  one = jnp.ones_like(t)
  keep = jnp.where(is_one, one - one / t, b)
  rate = jnp.where(is_one, one / t, one - b)
  bias_correction = jnp.where(is_one, one, one - b**t)
  return keep, rate, bias_correction


def abs_sq(g: jax.Array) -> jax.Array:
  """``|g|^2``, real for complex ``g`` (``g * g`` for real ``g``)."""
  if jnp.iscomplexobj(g):
    return (g.conj() * g).real
  return g * g


def safe_divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
  """``numerator / denominator``, but exactly 0 where the numerator is 0.

  With ``eps = eps_root = 0`` (allowed) an all-zero gradient would otherwise
  give ``0 / 0 = NaN``; the limit of the Adam step there is 0.
  """
  zero = jnp.zeros_like(numerator)
  return jnp.where(numerator == zero, zero, numerator / denominator)


def saturate(x: jax.Array) -> jax.Array:
  """``x`` clipped to its dtype's finite range: overflow saturates at the
  largest finite value instead of becoming infinite. NaN stays NaN."""
  big = float(jnp.finfo(x.dtype).max)
  return jnp.clip(x, -big, big)


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
