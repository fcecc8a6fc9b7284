"""Schedule-free AdamW (Defazio et al., 2024) over the one Adam rule.

The base step is the rule without a first moment (``b1 = 0``: optax's
``scale_by_rms(eps_in_sqrt=False, bias_correction=True)``), then the
decoupled decay and the learning rate, as in
``optax.contrib.schedule_free_adamw``; the wrapper keeps optax's
``ScheduleFreeState`` (the ``z`` sequence, the averaging weights), so a state
made by optax steps here and the other way round.
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax
import optax.contrib

from adam_jax._src import alias
from adam_jax._src import placement
from adam_jax._src import storage
from adam_jax._src import transform
from adam_jax._src import validation

ScheduleFreeState = optax.contrib.ScheduleFreeState


def schedule_free_eval_params(state: Any, params: Any) -> Any:
  r"""The parameters to evaluate at: :math:`x_t = (y_t - (1-\beta_1) z_t) /
  \beta_1`, a drop-in for ``optax.contrib.schedule_free_eval_params``.

  Schedule-free training steps the parameters :math:`y_t` where gradients
  are taken; the sequence that converges (and that validation and the final
  model should use) is the average :math:`x_t`, recovered from :math:`y_t`
  and the state's :math:`z_t` (computed in at least float32, returned in
  each parameter's dtype).

  Args:
    state: the state of :func:`schedule_free_adamw` (optax's
      ``ScheduleFreeState``).
    params: the current parameters :math:`y_t`.

  Returns:
    :math:`x_t`, a tree like ``params``.

  Example:
    >>> import jax.numpy as jnp
    >>> import adam_jax
    >>> solver = adam_jax.schedule_free_adamw(0.1)
    >>> params = jnp.array([1.0, -1.0])
    >>> state = solver.init(params)
    >>> print(adam_jax.schedule_free_eval_params(state, params))  # x_0 = y_0
    [ 1. -1.]

  References:
    Defazio et al., `The Road Less Scheduled
    <https://arxiv.org/abs/2405.15682>`_, NeurIPS 2024.
  """
  b1, z = getattr(state, "b1", None), getattr(state, "z", None)
  if b1 is None or z is None:
    raise ValueError(
      "schedule_free_eval_params needs the ScheduleFreeState of"
      f" schedule_free_adamw, got a {type(state).__name__}."
    )

  def x(y, zi):
    cdt = storage.compute_dtype(jnp.result_type(y))
    b = jnp.asarray(b1).astype(cdt)
    out = (jnp.asarray(y).astype(cdt) - (1 - b) * jnp.asarray(zi).astype(cdt)) / b
    return out.astype(jnp.result_type(y))

  return jax.tree.map(x, params, z)


def schedule_free_adamw(
  learning_rate: optax.ScalarOrSchedule = 0.0025,
  warmup_steps: int | None = None,
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  weight_decay: jax.typing.ArrayLike = 0.0,
  weight_lr_power: jax.typing.ArrayLike = 2.0,
  state_dtype: Any | None = None,
  *,
  nu_dtype: Any | None = None,
  skip_nonfinite: bool = False,
  pack_small_leaves: bool = True,
  int8_min_size: int = storage.INT8_MIN_SIZE,
  moment_rounding: str = "stochastic",
) -> optax.GradientTransformationExtraArgs:
  r"""Schedule-free AdamW, a drop-in for ``optax.contrib.schedule_free_adamw``.

  Momentum and the learning-rate schedule are replaced by interpolation and
  averaging (Defazio et al., 2024). With :math:`\gamma_t` the learning rate
  (warmed up linearly over ``warmup_steps``, then constant), :math:`s_t` the
  RMSprop step of the gradient taken at :math:`y_t` (Adam with
  :math:`\beta_1 = 0`, bias-corrected, ``eps`` outside the root) and
  :math:`c_{t+1} = \gamma_{\max}^p / \sum_{k \le t} \gamma_{\max,k}^p`
  (:math:`p` the ``weight_lr_power``):

  .. math::

    z_{t+1} &= z_t - \gamma_t (s_t + \lambda y_t) \\
    x_{t+1} &= (1 - c_{t+1})\, x_t + c_{t+1} z_{t+1} \\
    y_{t+1} &= \beta_1 x_{t+1} + (1 - \beta_1)\, z_{t+1}

  The parameters the optimizer updates are :math:`y_t`; evaluate at
  :math:`x_t` = :func:`schedule_free_eval_params` ``(state, params)``. The
  state is optax's ``ScheduleFreeState``, whose ``base_optimizer_state``
  holds the rule's second moment (optax's ``scale_by_rms`` state).

  Args:
    learning_rate: the constant (post-warmup) learning rate, >= 0, or a
      schedule of the step count (which, as in optax, the ``z`` step reads at
      the count before the step and the averaging weight at the count after
      it).
    warmup_steps: steps of linear warmup from 0, or ``None``.
    b1: the interpolation :math:`\beta_1`, in (0, 1).
    b2: decay rate of the second moment, in [0, 1).
    eps: added outside the root, >= 0.
    weight_decay: decoupled decay :math:`\lambda`, applied at :math:`y_t`.
    weight_lr_power: the power :math:`p` of the averaging weights.
    state_dtype: dtype of :math:`z` (``None``: the parameters').
    nu_dtype: storage dtype of the second moment (``"int8"`` included).
    skip_nonfinite: skip steps with a NaN/infinite gradient: a zero update
      and the whole state unchanged except the count of skipped steps.
    pack_small_leaves: pack small leaves' moments (see :func:`adam`).
    int8_min_size: float32 below this size with int8 storage (see :func:`adam`).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import adam_jax
    >>> f = lambda x: jnp.sum(x ** 2)
    >>> solver = adam_jax.schedule_free_adamw(1.0)
    >>> params = jnp.array([1.0, 2.0, 3.0])
    >>> state = solver.init(params)
    >>> for _ in range(5):
    ...   updates, state = solver.update(jax.grad(f)(params), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> print(f"{f(adam_jax.schedule_free_eval_params(state, params)):.2f}")
    0.41

  References:
    Defazio et al., `The Road Less Scheduled
    <https://arxiv.org/abs/2405.15682>`_, NeurIPS 2024.
  """
  validation.check_scalar_or_schedule("learning_rate", learning_rate)
  validation.check_interpolation("b1", b1)
  validation.check_scalar_or_schedule("weight_decay", weight_decay)
  validation.check_non_negative("weight_lr_power", weight_lr_power)
  if state_dtype is not None:
    state_dtype = validation.float_dtype("state_dtype", state_dtype)
  if warmup_steps is not None:
    validation.check_size("warmup_steps", warmup_steps)
    learning_rate = optax.warmup_constant_schedule(0.0, learning_rate, warmup_steps)
  cfg = transform.adam_config(
    0.0,
    b2,
    eps,
    0.0,
    None,
    nu_dtype=nu_dtype,
    skip_nonfinite=skip_nonfinite,
    pack_small_leaves=pack_small_leaves,
    int8_min_size=int8_min_size,
    moment_rounding=moment_rounding,
    first_moment=False,
  )
  base = optax.chain(
    transform.adam_family(cfg),
    alias.add_decayed_weights(weight_decay, None),
    alias.scale_by_learning_rate(learning_rate),
  )
  return _schedule_free(
    base, learning_rate, b1, weight_lr_power, state_dtype, skip_nonfinite
  )


def _schedule_free(base, learning_rate, b1, weight_lr_power, state_dtype, skip):
  """optax's ``schedule_free`` wrapper around ``base`` (its arithmetic, in at
  least float32 per leaf), skipping non-finite steps when ``skip``."""

  def init_fn(params):
    dtype = _lowest_dtype(params)
    z = jax.tree.map(
      lambda p: jnp.array(p, dtype=state_dtype or jnp.result_type(p)), params
    )
    return ScheduleFreeState(
      b1=placement.scalar(params, b1, dtype),
      weight_sum=placement.scalar(params, 0, dtype),
      step_count=placement.scalar(params, 1, jnp.int32),
      max_lr=placement.scalar(params, 0, dtype),
      base_optimizer_state=base.init(params),
      z=z,
    )

  def update_fn(grads, state, params=None, **extra_args):
    validation.check_params(
      params, "schedule_free_adamw", "another optimizer", "updates", grads
    )
    lr = learning_rate
    if callable(lr):
      lr = jnp.asarray(lr(state.step_count), dtype=state.max_lr.dtype)
    max_lr = jnp.maximum(state.max_lr, lr)
    weight = max_lr**weight_lr_power
    total = state.weight_sum + weight
    ck = jnp.where(
      jnp.isnan(weight) | jnp.isnan(total),
      jnp.full(weight.shape, jnp.nan),
      jnp.nan_to_num(weight / total, nan=0.0, posinf=jnp.inf),
    )
    steps, base_state = base.update(grads, state.base_optimizer_state, params)
    z = jax.tree.map(lambda zi, u: _add(zi, u), state.z, steps)
    updates = jax.tree.map(
      lambda y, zi, zn: _interpolated_update(y, zi, zn, state.b1, ck),
      params,
      state.z,
      z,
    )
    new = ScheduleFreeState(
      state.b1, total, optax.safe_increment(state.step_count), max_lr, base_state, z
    )
    if skip:
      return _skipped(grads, updates, new, state)
    return updates, new

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _add(z, u):
  cdt = storage.compute_dtype(jnp.result_type(z))
  return (z.astype(cdt) + jnp.asarray(u).astype(cdt)).astype(z.dtype)


def _interpolated_update(y, z_old, z_new, b1, ck):
  """``y_{t+1} - y_t``: ``x_t`` recovered from ``y_t`` and ``z_t``, moved
  towards ``z_{t+1}`` by ``ck``, interpolated with ``z_{t+1}`` by ``b1``."""
  cdt = storage.compute_dtype(jnp.result_type(y))
  b, c = jnp.asarray(b1).astype(cdt), jnp.asarray(ck).astype(cdt)
  yc, zo, zn = (jnp.asarray(a).astype(cdt) for a in (y, z_old, z_new))
  x = (yc - (1 - b) * zo) / b
  x = (1 - c) * x + c * zn
  return (b * x + (1 - b) * zn - yc).astype(jnp.result_type(y))


def _skipped(grads, updates, new, old):
  """Zero updates and the old state (but the base's Adam state, which skipped
  the step itself and counted it) when any gradient element is non-finite:
  :func:`alias.skip_after_adam` with the wrapper's own fields beside the base
  chain's other states."""
  base, old_base = new.base_optimizer_state, old.base_optimizer_state
  zero, (_, kept) = alias.skip_after_adam(
    grads,
    updates,
    (base[0], new._replace(base_optimizer_state=base[1:])),
    (old_base[0], old._replace(base_optimizer_state=old_base[1:])),
  )
  return zero, kept._replace(base_optimizer_state=(base[0], *kept.base_optimizer_state))


def _lowest_dtype(params: Any) -> Any:
  """The narrowest float dtype among the parameters (optax's choice for the
  wrapper's scalars), float32 when there are none."""
  dtypes = [jnp.result_type(p) for p in jax.tree.leaves(params)]
  floats = [d for d in dtypes if jnp.issubdtype(d, jnp.floating)]
  if not floats:
    return jnp.float32
  return min(floats, key=lambda d: jnp.finfo(d).bits)
