"""The states of :func:`adam_jax.scale_by_adam` and its aliases.

With options that keep nothing beyond the moments, the state is optax's own
class (``optax.ScaleByAdamState``; ``optax.ScaleByAmsgradState`` with
AMSGrad), so code, tools and checkpoints written for optax see the state
they expect, and a state made by optax's ``init`` steps here; likewise
``optax.contrib.ScaleByAdemamixState`` for AdEMAMix and
optax's ``scale_by_rms`` state for the schedule-free base. Only
``skip_nonfinite=True`` keeps a field optax has no place for: its states are
adam_jax's own classes below, with that one extra field.
"""

import functools
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


ScaleByAdemamixState = optax.contrib.ScaleByAdemamixState


@functools.cache
def rms_state_class() -> type[Any]:
  """optax's state of ``scale_by_rms(bias_correction=True)`` (a count and a
  second moment), which optax does not export by name: found from the state
  its public ``init`` returns, traced abstractly (no device work)."""
  init = optax.scale_by_rms(bias_correction=True).init
  return type(jax.eval_shape(init, {}))


class ScaleByAdemamixSkipState(NamedTuple):
  """State of :func:`adam_jax.ademamix` with ``skip_nonfinite=True``: the
  fields of ``optax.contrib.ScaleByAdemamixState`` and the count of skipped
  steps.

  Attributes:
    count: number of updates taken (skipped steps not counted), int32.
    count_m2: the step count the ``b3`` and ``alpha`` schedules read, int32.
    m1: the fast EMA of the gradient (Adam's first moment).
    m2: the slow EMA of the gradient (decay ``b3``).
    nu: the second moment.
    skipped: steps skipped because a gradient element was NaN or infinite.

  Example:
    >>> import jax.numpy as jnp
    >>> import adam_jax
    >>> tx = adam_jax.ademamix(skip_nonfinite=True)
    >>> tx.init(jnp.zeros(2))[0]._fields
    ('count', 'count_m2', 'm1', 'm2', 'nu', 'skipped')
  """

  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count
  count_m2: jax.Array
  m1: optax.Updates
  m2: optax.Updates
  nu: optax.Updates
  skipped: jax.Array


class ScaleByRmsSkipState(NamedTuple):
  """State of the schedule-free base (a second moment only) with
  ``skip_nonfinite=True``: the fields of optax's ``scale_by_rms`` state and
  the count of skipped steps.

  Attributes:
    count: number of updates taken (skipped steps not counted), int32.
    nu: the second moment.
    skipped: steps skipped because a gradient element was NaN or infinite.

  Example:
    >>> import jax.numpy as jnp
    >>> import adam_jax
    >>> tx = adam_jax.schedule_free_adamw(skip_nonfinite=True)
    >>> tx.init(jnp.zeros(2)).base_optimizer_state[0]._fields
    ('count', 'nu', 'skipped')
  """

  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count
  nu: optax.Updates
  skipped: jax.Array


ADAM_STATES = (
  ScaleByAdamState,
  ScaleByAmsgradState,
  ScaleByAdamSkipState,
  ScaleByAmsgradSkipState,
  ScaleByAdemamixState,
  ScaleByAdemamixSkipState,
  ScaleByRmsSkipState,
)


def is_adam_state(x: Any) -> bool:
  """Whether ``x`` is the state of a ``scale_by_adam`` configuration."""
  return isinstance(x, ADAM_STATES) or type(x) is rms_state_class()


_CLASSES = {
  ("adam", False, False): ScaleByAdamState,
  ("adam", True, False): ScaleByAmsgradState,
  ("adam", False, True): ScaleByAdamSkipState,
  ("adam", True, True): ScaleByAmsgradSkipState,
  ("ademamix", False, False): ScaleByAdemamixState,
  ("ademamix", False, True): ScaleByAdemamixSkipState,
  ("rms", False, True): ScaleByRmsSkipState,
}


def family(cfg: Any) -> str:
  """Which state family a configuration keeps: ``"adam"`` (optax's Adam and
  AMSGrad states), ``"ademamix"`` (a slow EMA) or ``"rms"`` (no first
  moment)."""
  if cfg.slow:
    return "ademamix"
  return "adam" if cfg.first_moment else "rms"


def state_class(cfg: Any) -> type[Any]:
  """The state class of a configuration: optax's unless ``skip_nonfinite``."""
  if family(cfg) == "rms" and not cfg.skip_nonfinite:
    return rms_state_class()
  return _CLASSES[(family(cfg), bool(cfg.amsgrad), bool(cfg.skip_nonfinite))]


def make_state(cfg: Any, count: Any, moments: Any, skipped: Any) -> Any:
  """The state of ``cfg`` holding ``count``, the moments ``(mu, nu, nu_max,
  slow)`` and ``skipped`` (fields the configuration does not keep are
  ignored)."""
  mu, nu, nu_max, slow = moments
  fields = {
    "count": count,
    "count_m2": count,
    "mu": mu,
    "m1": mu,
    "m2": slow,
    "nu": nu,
    "nu_max": nu_max,
    "skipped": skipped,
  }
  cls = state_class(cfg)
  return cls(**{f: fields[f] for f in cls._fields})


def moments_of(state: Any) -> list[Any]:
  """A state's moments ``[mu, nu, nu_max, slow]`` (None where it keeps
  none), whatever its class names them."""
  mu = getattr(state, "mu", getattr(state, "m1", None))
  return [mu, state.nu, getattr(state, "nu_max", None), getattr(state, "m2", None)]


def tree_field(state: Any) -> str:
  """The field holding a moment in the parameters' structure, as error
  messages name it: ``mu`` (``m1`` for AdEMAMix, ``nu`` without a first
  moment)."""
  return next(f for f in ("mu", "m1", "nu") if f in state._fields)
