"""The state of :func:`adam_jax.scale_by_adam`."""

from typing import NamedTuple

import jax
import optax


class ScaleByAdamState(NamedTuple):
  """State of :func:`scale_by_adam` (and of every adam_jax optimizer).

  Attributes:
    count: number of updates taken so far, an int32 scalar that saturates at
      ``2**31 - 1`` instead of overflowing.
    mu: first moment :math:`m_t`, a tree like the parameters, stored in
      ``mu_dtype`` (default: the parameter's dtype); with
      ``pack_small_leaves`` and many small leaves, a :class:`PackedMoments`
      standing for that tree (``mu.unpack()``, ``mu["key"]``).
    nu: second moment :math:`v_t` (for AdaMax, the infinity norm :math:`u_t`),
      stored in ``nu_dtype`` (default: the parameter's real dtype).
    nu_max: running maximum of the second moment for AMSGrad, else ``None``.
    skipped: with ``skip_nonfinite=True``, the number of steps skipped because
      a gradient element was NaN or infinite (an int32 scalar saturating at
      ``2**31 - 1``), else ``None``. Skipped steps do not advance ``count``.
  """

  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count
  mu: optax.Updates
  nu: optax.Updates
  nu_max: optax.Updates | None = None
  skipped: jax.Array | None = None
