"""The modern members of the Adam family, each a configuration of the one rule.

ADOPT, AdEMAMix, RAdam, AdaMaxW and schedule-free AdamW, with the signatures
of their optax namesakes (``optax.contrib.adopt``, ``optax.contrib.ademamix``,
``optax.radam``, ``optax.adamaxw``, ``optax.contrib.schedule_free_adamw``)
and optax's state classes. The rule (``rule.py``) computes every one of them;
this module only chooses its options and the chain around it.
"""

from collections.abc import Callable
from typing import Any
from typing import TypeAlias

import jax
import jax.numpy as jnp
import optax
import optax.contrib

from adam_jax._src import alias
from adam_jax._src import storage
from adam_jax._src import transform
from adam_jax._src import validation

ScalarOrSchedule: TypeAlias = optax.ScalarOrSchedule


def _quarter_power(count: jax.Array) -> jax.Array:
  """ADOPT's default clip value :math:`c_t = t^{1/4}`, ``t`` the count
  before the increment (as optax)."""
  return jnp.asarray(count, jnp.float32) ** 0.25


def adopt(
  learning_rate: ScalarOrSchedule = 1e-3,
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.9999,
  eps: jax.typing.ArrayLike = 1e-6,
  mu_dtype: Any | None = None,
  *,
  nesterov: bool = False,
  use_clipping: bool = True,
  clip_value_fn: Callable[[jax.Array], jax.Array] = _quarter_power,
  nu_dtype: Any | None = None,
  weight_decay: ScalarOrSchedule | None = None,
  mask: alias.MaskOrFn = None,
  maximize: bool = False,
  cautious: bool = False,
  skip_nonfinite: bool = False,
  pack_small_leaves: bool = True,
  int8_min_size: int = storage.INT8_MIN_SIZE,
  moment_rounding: str = "stochastic",
  param_rounding: str | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""ADOPT (Taniguchi et al., 2024), a drop-in for ``optax.contrib.adopt``.

  The gradient is normalized by the *previous* second moment before it
  enters the first moment, which removes the correlation between
  :math:`g_t` and :math:`v_t` that makes Adam diverge for some
  :math:`\beta_2` (Reddi et al., 2018); ADOPT converges for any
  :math:`\beta_2`:

  .. math::

    m_t &= \beta_1 m_{t-1} + (1-\beta_1)\, \operatorname{clip}\left(g_t /
    \max(\sqrt{v_{t-1}}, \varepsilon),\ c_t\right) \\
    v_t &= \beta_2 v_{t-1} + (1-\beta_2)\, g_t^2, \qquad
    u_t = -\alpha_t\, m_t

  with :math:`c_t` = ``clip_value_fn(count)`` (the count before this step:
  0, 1, 2, ...). The first call only sets :math:`v_0 = g_0^2` and returns a
  zero update. There is no bias correction. The state is optax's
  ``ScaleByAdamState``.

  pytorch-optimizer's ``ADOPT`` (and the authors' code) pass its
  ``clip_lambda`` the step *including* the first call (1, 2, 3, ...), so its
  clip is :math:`(t+1)^{1/4}` where optax's and the paper's Algorithm 2 is
  :math:`t^{1/4}` for the :math:`t`-th update; reproduce it with
  ``clip_value_fn=lambda count: (count + 1) ** 0.25``.

  Args:
    learning_rate: step size (>= 0) or schedule.
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the second moment, in [0, 1) (0.9999, as the paper).
    eps: the floor of :math:`\sqrt{v_{t-1}}`, >= 0.
    mu_dtype: storage dtype of :math:`m_t` (``None``: the parameter's;
      ``"int8"``: block-wise 8-bit, see :func:`scale_by_adam`).
    nesterov: Nesterov's look-ahead, :math:`u_t = -\alpha_t (\beta_1 m_t +
      (1-\beta_1) \operatorname{clip}(\cdot))`, as in optax.
    use_clipping: clip the normalized gradient at :math:`c_t`.
    clip_value_fn: :math:`c_t` as a function of the count before the step
      (or a constant clip value >= 0, which is what
      ``optax.inject_hyperparams`` passes).
    nu_dtype: storage dtype of :math:`v_t` (as in :func:`scale_by_adam`).
    weight_decay: coupled L2 coefficient (added to the gradient before both
      moments, as pytorch-optimizer's default), or ``None``.
    mask: where ``weight_decay`` applies (as in :func:`adam`).
    maximize: ascend the objective.
    cautious: Cautious ADOPT (see :func:`scale_by_adam`).
    skip_nonfinite: skip steps with a NaN/infinite gradient (see :func:`adam`).
    pack_small_leaves: pack small leaves' moments (see :func:`adam`).
    int8_min_size: float32 below this size with int8 storage (see :func:`adam`).
    moment_rounding: ``"stochastic"`` or ``"nearest"`` rounding of moments
      stored in a narrower float (see :func:`adam`).
    param_rounding: ``"kahan"`` for compensated bf16/f16 updates (see
      :func:`adam`).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`.

  Example:
    >>> import jax.numpy as jnp
    >>> import adam_jax
    >>> solver = adam_jax.adopt(0.1)
    >>> state = solver.init(jnp.zeros(2))
    >>> updates, state = solver.update(jnp.array([2.0, -1.0]), state)
    >>> print(abs(updates), state[0].nu)  # the first call only sets v_0 = g_0^2
    [0. 0.] [4. 1.]
    >>> updates, state = solver.update(jnp.array([2.0, -1.0]), state)
    >>> print(updates)  # -0.1 * (1 - 0.9) * clip(g / sqrt(v_0), 1)
    [-0.01  0.01]

  References:
    Taniguchi et al., `ADOPT: Modified Adam Can Converge with Any beta_2 with
    the Optimal Rate <https://arxiv.org/abs/2411.02853>`_, NeurIPS 2024.
  """
  validation.check_scalar_or_schedule("learning_rate", learning_rate)
  validation.check_bool("use_clipping", use_clipping)
  clip = _clip_function(clip_value_fn)
  cfg = transform.adam_config(
    b1,
    b2,
    eps,
    0.0,
    mu_dtype,
    nesterov=nesterov,
    nu_dtype=nu_dtype,
    maximize=maximize,
    weight_decay=weight_decay,
    mask=mask,
    skip_nonfinite=skip_nonfinite,
    pack_small_leaves=pack_small_leaves,
    int8_min_size=int8_min_size,
    moment_rounding=moment_rounding,
    cautious=cautious,
    adopt=True,
    adopt_clip=clip if use_clipping else None,
  )
  return alias.chain_of(
    transform.adam_family(cfg),
    alias.scale_by_learning_rate(learning_rate),
    skip_nonfinite=skip_nonfinite,
    param_rounding=param_rounding,
  )


def _clip_function(clip_value_fn: Any) -> Callable[[jax.Array], Any]:
  """ADOPT's clip as a function of the count. A number (or array) is a
  constant clip: ``optax.inject_hyperparams`` evaluates a function argument
  at the count and passes its value."""
  if callable(clip_value_fn):
    return clip_value_fn
  allowed = "a function of the step count, or a clip value >= 0"
  validation.check_non_negative("clip_value_fn", clip_value_fn, allowed)
  return lambda count: clip_value_fn


def ademamix(
  learning_rate: ScalarOrSchedule = 1e-3,
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  b3: ScalarOrSchedule = 0.9999,
  alpha: ScalarOrSchedule = 5.0,
  eps: jax.typing.ArrayLike = 1e-8,
  eps_root: jax.typing.ArrayLike = 0.0,
  mu_dtype: Any | None = None,
  weight_decay: ScalarOrSchedule = 0.0,
  mask: alias.MaskOrFn = None,
  *,
  nu_dtype: Any | None = None,
  cautious: bool = False,
  skip_nonfinite: bool = False,
  pack_small_leaves: bool = True,
  int8_min_size: int = storage.INT8_MIN_SIZE,
  moment_rounding: str = "stochastic",
  param_rounding: str | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""AdEMAMix (Pagliardini et al., 2024), a drop-in for ``optax.contrib.ademamix``.

  Adam's first moment is mixed with a slow EMA of the gradient, which keeps
  gradients from thousands of steps ago in the step:

  .. math::

    m^{(1)}_t &= \beta_1 m^{(1)}_{t-1} + (1-\beta_1)\, g_t, \qquad
    m^{(2)}_t = \beta_3 m^{(2)}_{t-1} + (1-\beta_3)\, g_t \\
    u_t &= -\alpha_t \left(\frac{m^{(1)}_t / (1-\beta_1^t) + \alpha\,
    m^{(2)}_t}{\sqrt{\hat v_t + \bar\varepsilon} + \varepsilon} +
    \lambda \theta_{t-1}\right)

  (:math:`m^{(2)}` is not bias-corrected, as in the paper and optax;
  :math:`\alpha_t` the learning rate and :math:`\alpha` the mixing weight).
  ``b3`` and ``alpha`` may be schedules of the step count (the paper warms
  them up over long runs). The state is ``optax.contrib.ScaleByAdemamixState``
  (``m1``, ``m2``, ``nu``); the slow EMA is stored like the first moment
  (``mu_dtype``, ``"int8"`` included) and, as in optax, ``nu`` follows
  ``mu_dtype`` unless ``nu_dtype`` is given.

  Args:
    learning_rate: step size (>= 0) or schedule.
    b1: decay rate of the fast EMA, in [0, 1).
    b2: decay rate of the second moment, in [0, 1).
    b3: decay rate of the slow EMA, in [0, 1), or a schedule.
    alpha: weight of the slow EMA, >= 0, or a schedule.
    eps: added outside the root, >= 0.
    eps_root: added inside the root, >= 0.
    mu_dtype: storage dtype of both EMAs.
    weight_decay: decoupled weight decay (as in :func:`adamw`).
    mask: where ``weight_decay`` applies.
    nu_dtype: storage dtype of the second moment (default: ``mu_dtype``).
    cautious: mask the whole step where it disagrees with the gradient (see
      :func:`scale_by_adam`; pytorch-optimizer's ``AdEMAMix(cautious=True)``
      masks the fast EMA only).
    skip_nonfinite: skip steps with a NaN/infinite gradient (see :func:`adam`).
    pack_small_leaves: pack small leaves' moments (see :func:`adam`).
    int8_min_size: float32 below this size with int8 storage (see :func:`adam`).
    moment_rounding: ``"stochastic"`` or ``"nearest"`` rounding of moments
      stored in a narrower float (see :func:`adam`).
    param_rounding: ``"kahan"`` for compensated bf16/f16 updates (see
      :func:`adam`).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`.

  Example:
    >>> import jax.numpy as jnp
    >>> import adam_jax
    >>> solver = adam_jax.ademamix(0.1, alpha=5.0)
    >>> params = jnp.zeros(2)
    >>> state = solver.init(params)
    >>> updates, state = solver.update(jnp.array([2.0, -1.0]), state, params)
    >>> print(*(f"{x:+.5f}" for x in updates))  # -0.1 (1 + 5 (1 - 0.9999)) sign(g)
    -0.10005 +0.10005

  References:
    Pagliardini, Ablin & Grangier, `The AdEMAMix Optimizer: Better, Faster,
    Older <https://arxiv.org/abs/2409.03137>`_, 2024.
  """
  validation.check_scalar_or_schedule("learning_rate", learning_rate)
  validation.check_scalar_or_schedule("weight_decay", weight_decay)
  validation.check_mask("mask", mask)
  validation.check_decay_or_schedule("b3", b3)
  validation.check_scalar_or_schedule("alpha", alpha)
  if nu_dtype is None and not _complex_dtype(mu_dtype):
    nu_dtype = mu_dtype  # optax keeps nu in mu_dtype
  cfg = transform.adam_config(
    b1,
    b2,
    eps,
    eps_root,
    mu_dtype,
    nu_dtype=nu_dtype,
    skip_nonfinite=skip_nonfinite,
    pack_small_leaves=pack_small_leaves,
    int8_min_size=int8_min_size,
    moment_rounding=moment_rounding,
    cautious=cautious,
    slow_b3=b3,
    slow_alpha=alpha,
  )
  return alias.chain_of(
    transform.adam_family(cfg),
    alias.add_decayed_weights(weight_decay, mask),
    alias.scale_by_learning_rate(learning_rate),
    skip_nonfinite=skip_nonfinite,
    param_rounding=param_rounding,
  )


def _complex_dtype(dtype: Any) -> bool:
  """A complex dtype (anything else, valid or not, is checked later)."""
  try:
    return jnp.issubdtype(jnp.dtype(dtype), jnp.complexfloating)
  except TypeError:
    return False


def radam(
  learning_rate: ScalarOrSchedule = 1e-3,
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  eps_root: jax.typing.ArrayLike = 0.0,
  threshold: jax.typing.ArrayLike = 5.0,
  *,
  nesterov: bool = False,
  mu_dtype: Any | None = None,
  nu_dtype: Any | None = None,
  weight_decay: ScalarOrSchedule | None = None,
  mask: alias.MaskOrFn = None,
  maximize: bool = False,
  eps_hat: bool = False,
  cautious: bool = False,
  update_clipping: bool = False,
  skip_nonfinite: bool = False,
  pack_small_leaves: bool = True,
  int8_min_size: int = storage.INT8_MIN_SIZE,
  moment_rounding: str = "stochastic",
  param_rounding: str | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Rectified Adam (Liu et al., 2020), a drop-in for :func:`optax.radam`.

  Early in training :math:`\hat v_t` averages few gradients and the adaptive
  step has a large variance; RAdam takes the plain momentum step until the
  length :math:`\rho_t` of the approximated simple moving average reaches
  ``threshold``, and rectifies the Adam step after:

  .. math::

    \rho_\infty = \frac{2}{1-\beta_2} - 1, \quad
    \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1-\beta_2^t}, \quad
    u_t = \begin{cases} -\alpha_t\, r_t\, \hat m_t / (\sqrt{\hat v_t +
    \bar\varepsilon} + \varepsilon) & \rho_t \ge \text{threshold} \\
    -\alpha_t\, \hat m_t & \text{otherwise} \end{cases}

  with :math:`r_t = \sqrt{(\rho_t-4)(\rho_t-2)\rho_\infty /
  ((\rho_\infty-4)(\rho_\infty-2)\rho_t)}`. The state is optax's
  ``ScaleByAdamState``.

  ``torch.optim.RAdam`` adds ``eps`` to :math:`\sqrt{v_t}` before the bias
  correction: ``eps_hat=True`` reproduces it (its test is
  :math:`\rho_t > 5`, the same steps in practice).

  Args:
    learning_rate: step size (>= 0) or schedule.
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the second moment, in [0, 1).
    eps: added outside the root, >= 0.
    eps_root: added inside the root, >= 0.
    threshold: the :math:`\rho_t` from which the step is rectified, >= 0.
    nesterov: Nesterov momentum (as :func:`nadam`).
    mu_dtype: storage dtype of the first moment.
    nu_dtype: storage dtype of the second moment.
    weight_decay: coupled L2 coefficient (as ``torch.optim.RAdam``), or
      ``None``.
    mask: where ``weight_decay`` applies.
    maximize: ascend the objective.
    eps_hat: ``eps`` before bias correction (``torch.optim.RAdam``).
    cautious: see :func:`scale_by_adam`.
    update_clipping: see :func:`scale_by_adam`.
    skip_nonfinite: skip steps with a NaN/infinite gradient (see :func:`adam`).
    pack_small_leaves: pack small leaves' moments (see :func:`adam`).
    int8_min_size: float32 below this size with int8 storage (see :func:`adam`).
    moment_rounding: ``"stochastic"`` or ``"nearest"`` rounding of moments
      stored in a narrower float (see :func:`adam`).
    param_rounding: ``"kahan"`` for compensated bf16/f16 updates (see
      :func:`adam`).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`.

  Example:
    >>> import jax.numpy as jnp
    >>> import adam_jax
    >>> solver = adam_jax.radam(0.1)
    >>> state = solver.init(jnp.zeros(2))
    >>> updates, state = solver.update(jnp.array([2.0, -1.0]), state)
    >>> print(*(f"{x:+.4f}" for x in updates))  # rho_1 = 1 < 5: -0.1 * m_hat
    -0.2000 +0.1000

  References:
    Liu et al., `On the Variance of the Adaptive Learning Rate and Beyond
    <https://arxiv.org/abs/1908.03265>`_, ICLR 2020.
  """
  validation.check_scalar_or_schedule("learning_rate", learning_rate)
  validation.check_non_negative("threshold", threshold)
  cfg = transform.adam_config(
    b1,
    b2,
    eps,
    eps_root,
    mu_dtype,
    nesterov=nesterov,
    nu_dtype=nu_dtype,
    maximize=maximize,
    eps_hat=eps_hat,
    weight_decay=weight_decay,
    mask=mask,
    skip_nonfinite=skip_nonfinite,
    pack_small_leaves=pack_small_leaves,
    int8_min_size=int8_min_size,
    moment_rounding=moment_rounding,
    cautious=cautious,
    update_clipping=update_clipping,
    rectify_threshold=threshold,
  )
  return alias.chain_of(
    transform.adam_family(cfg),
    alias.scale_by_learning_rate(learning_rate),
    skip_nonfinite=skip_nonfinite,
    param_rounding=param_rounding,
  )
