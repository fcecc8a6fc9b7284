"""Parameter averaging (Kingma & Ba, 2015, Section 7.2), kept in the state.

``adam(..., average_decay=b)`` appends one step to the chain, after the
learning rate: it sees the final update :math:`u_t` and the parameters
:math:`\\theta_{t-1}`, forms :math:`\\theta_t = \\theta_{t-1} + u_t` (what
``optax.apply_updates`` will produce) and folds it into an exponential moving
average. The updates pass through unchanged.

The state stores the *bias-corrected* average directly,

  a_t = a_{t-1} + r_t (theta_t - a_{t-1}),  r_t = (1 - b) / (1 - b^t),

which equals the paper's ``theta_bar_t / (1 - b^t)`` with
``theta_bar_t = b theta_bar_{t-1} + (1 - b) theta_t, theta_bar_0 = 0``
(``r_1 = 1``, so ``a_0`` -- the initial parameters -- never enters). Keras's
``use_ema`` is the same recursion with ``r_1 = 1`` and ``r_t = 1 - b`` after
(its average starts at the first updated parameters and is never corrected).
So the average is usable at every step, including before the first one.
"""

from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from adam_jax._src import placement
from adam_jax._src import rule
from adam_jax._src import storage
from adam_jax._src import validation

AVERAGE_MODES = ("paper", "keras")


class ParamAverageState(NamedTuple):
  """State of the parameter-averaging step.

  Attributes:
    count: number of averaged steps, an int32 scalar saturating at
      ``2**31 - 1``.
    average: the averaged parameters, in at least float32 (float32 for
      bfloat16/float16 parameters, whose rounding would stall the average).
  """

  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count
  average: optax.Params


def check_average(decay: Any, mode: Any) -> None:
  validation.check_choice("average_mode", mode, AVERAGE_MODES)
  if decay is None:
    validation.check_unused("average_mode", mode, "paper", "average_decay")
  else:
    validation.check_decay("average_decay", decay)


def average_params(decay: Any, mode: str) -> optax.GradientTransformation:
  """The chain step that keeps the parameter average (see the module doc)."""

  def init_fn(params):
    return ParamAverageState(
      count=placement.counter(params),
      average=jax.tree.map(
        lambda p: jnp.asarray(p).astype(storage.compute_dtype(jnp.result_type(p))),
        params,
      ),
    )

  def update_fn(updates, state, params=None):
    validation.check_params(
      params, "average_decay", "average_decay=None", "state.average", state.average
    )
    count = optax.safe_increment(state.count)

    def leaf(u, p, a):
      if u is None:
        return a
      p = jnp.asarray(p)
      cdt = storage.compute_dtype(p.dtype)
      # theta_t exactly as optax.apply_updates rounds it.
      theta = (p.astype(cdt) + u.astype(cdt)).astype(p.dtype).astype(a.dtype)
      rdt = storage.real_dtype(a.dtype)
      b = rule.cast_hyperparameter(decay, rdt)
      _, rate, correction = rule.ema_coefficients(b, count.astype(rdt))
      if mode == "paper":
        r = rate / correction
      else:
        one = jnp.ones([], rdt)
        r = jnp.where(count == 1, one, jnp.asarray(rate, rdt))
      r = r if isinstance(r, (int, float)) else r.astype(a.dtype)
      return a + r * (theta - a)

    average = jax.tree.map(
      leaf, updates, params, state.average, is_leaf=validation.is_none
    )
    return updates, ParamAverageState(count=count, average=average)

  return optax.GradientTransformation(init_fn, update_fn)


def averaged_params(opt_state: Any) -> optax.Params:
  r"""The averaged parameters kept by an optimizer built with ``average_decay``.

  Kingma & Ba (2015, Section 7.2) evaluate with a temporal average of the
  parameters, :math:`\bar\theta_t = \beta \bar\theta_{t-1} + (1 - \beta)
  \theta_t` with :math:`\bar\theta_0 = 0`, bias-corrected as
  :math:`\hat\theta_t = \bar\theta_t / (1 - \beta^t)`. With
  ``average_decay=`` :math:`\beta` (``average_mode="paper"``) the optimizer
  state keeps :math:`\hat\theta_t` for the parameters *after* each update;
  with ``average_mode="keras"`` it keeps Keras's ``use_ema`` average instead
  (:math:`\bar\theta_1 = \theta_1`, then the same recursion, no correction).
  Before the first update it holds the initial parameters.

  The state can sit anywhere inside ``opt_state`` (under ``optax.chain``,
  ``inject_hyperparams``, ``MultiSteps``, ...); the first parameter average
  found, in tree order, is returned. Training continues from the raw
  parameters; the average is for evaluation (and checkpoints).

  Args:
    opt_state: the state of an optimizer built with ``average_decay`` set.

  Returns:
    A tree like the parameters, in at least float32.

  Raises:
    ValueError: the state holds no parameter average.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import adam_jax
    >>> solver = adam_jax.adam(0.1, average_decay=0.5)
    >>> params = jnp.array([0.0])
    >>> state = solver.init(params)
    >>> for _ in range(2):
    ...   updates, state = solver.update(jnp.array([-1.0]), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> # theta = 0.1, 0.2: (0.5 * 0.5 * 0.1 + 0.5 * 0.2) / (1 - 0.5 ** 2)
    >>> print(f"{params[0]:.4f} {adam_jax.averaged_params(state)[0]:.4f}")
    0.2000 0.1667

  References:
    Kingma & Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, ICLR 2015, Section 7.2.

    Polyak & Juditsky, `Acceleration of Stochastic Approximation by Averaging
    <https://doi.org/10.1137/0330046>`_, SIAM J. Control Optim., 1992.
  """
  found = [
    s
    for s in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, ParamAverageState)
    )
    if isinstance(s, ParamAverageState)
  ]
  if not found:
    raise ValueError(
      "averaged_params: this optimizer state keeps no parameter average;"
      " build the optimizer with average_decay=... (e.g."
      " adam_jax.adam(1e-3, average_decay=0.999))."
    )
  return found[0].average
