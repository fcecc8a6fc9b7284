"""The states of :func:`adam_jax.scale_by_adam` and its aliases.

With options that keep nothing beyond the moments, the state is optax's own
class (``optax.ScaleByAdamState``; ``optax.ScaleByAmsgradState`` with
AMSGrad), so code, tools and checkpoints written for optax see the state
they expect, and a state made by optax's ``init`` steps here. Only
``skip_nonfinite=True`` keeps a field optax has no place for: its states are
adam_jax's own classes below, with that one extra field.
"""

from typing import Any
from typing import NamedTuple

import jax
import optax

ScaleByAdamState = optax.ScaleByAdamState
ScaleByAmsgradState = optax.ScaleByAmsgradState


class ScaleByAdamSkipState(NamedTuple):
  """State of an Adam with ``skip_nonfinite=True``.

  Attributes:
    count: number of updates taken so far (skipped steps not counted), an
      int32 scalar that saturates at ``2**31 - 1`` instead of overflowing.
    mu: first moment :math:`m_t`, as in ``optax.ScaleByAdamState``.
    nu: second moment :math:`v_t` (for AdaMax, the infinity norm
      :math:`u_t`), as in ``optax.ScaleByAdamState``.
    skipped: the number of steps skipped because a gradient element was NaN
      or infinite (an int32 scalar saturating at ``2**31 - 1``).

  Example:
    >>> import jax.numpy as jnp
    >>> import adam_jax
    >>> state = adam_jax.scale_by_adam(skip_nonfinite=True).init(jnp.zeros(2))
    >>> type(state).__name__, state._fields
    ('ScaleByAdamSkipState', ('count', 'mu', 'nu', 'skipped'))
  """

  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count
  mu: optax.Updates
  nu: optax.Updates
  skipped: jax.Array


class ScaleByAmsgradSkipState(NamedTuple):
  """State of an AMSGrad with ``skip_nonfinite=True``: the fields of
  :class:`ScaleByAdamSkipState` and AMSGrad's running maximum.

  Attributes:
    count: as in :class:`ScaleByAdamSkipState`.
    mu: as in :class:`ScaleByAdamSkipState`.
    nu: as in :class:`ScaleByAdamSkipState`.
    nu_max: running maximum of the second moment, as in
      ``optax.ScaleByAmsgradState``.
    skipped: as in :class:`ScaleByAdamSkipState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import adam_jax
    >>> tx = adam_jax.amsgrad(skip_nonfinite=True)
    >>> tx.init(jnp.zeros(2))[0]._fields
    ('count', 'mu', 'nu', 'nu_max', 'skipped')
  """

  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count
  mu: optax.Updates
  nu: optax.Updates
  nu_max: optax.Updates
  skipped: jax.Array


ADAM_STATES = (
  ScaleByAdamState,
  ScaleByAmsgradState,
  ScaleByAdamSkipState,
  ScaleByAmsgradSkipState,
)


def state_class(amsgrad: bool, skip_nonfinite: bool) -> type[Any]:
  """The state class of a configuration: optax's unless ``skip_nonfinite``."""
  return {
    (False, False): ScaleByAdamState,
    (True, False): ScaleByAmsgradState,
    (False, True): ScaleByAdamSkipState,
    (True, True): ScaleByAmsgradSkipState,
  }[(bool(amsgrad), bool(skip_nonfinite))]


def make_state(
  amsgrad: bool,
  skip_nonfinite: bool,
  count: Any,
  mu: Any,
  nu: Any,
  nu_max: Any,
  skipped: Any,
) -> Any:
  """The state of a configuration holding these fields (``nu_max`` and
  ``skipped`` are ignored when their option is off)."""
  extra = [x for x, on in ((nu_max, amsgrad), (skipped, skip_nonfinite)) if on]
  return state_class(amsgrad, skip_nonfinite)(count, mu, nu, *extra)
