"""The optimizers users call: chains of ``scale_by_adam`` and two small steps.

Each alias has the signature of its optax namesake (names, order, defaults),
``learning_rate`` defaulting to the paper's ``1e-3``, and the same chain shape
(so the same state structure): ``scale_by_adam`` -> [weight decay] ->
learning rate. The learning-rate and weight-decay steps are ours, not optax's,
only because they keep each update in its gradient's dtype (optax #1098/#1207)
and work under ``jax_numpy_dtype_promotion="strict"``; in float32 they compute
the same numbers as ``optax.scale_by_learning_rate`` and
``optax.add_decayed_weights``.
"""

from collections.abc import Callable
from typing import Any
from typing import NamedTuple
from typing import TypeAlias

import jax
import jax.numpy as jnp
import optax

from adam_jax._src import averaging
from adam_jax._src import packing
from adam_jax._src import placement
from adam_jax._src import rule
from adam_jax._src import state as states
from adam_jax._src import storage
from adam_jax._src import transform
from adam_jax._src import validation
from adam_jax._src.config import checked_config

ScalarOrSchedule: TypeAlias = optax.ScalarOrSchedule
MaskOrFn: TypeAlias = Any | Callable[[optax.Params], Any] | None


def _scale_leaf(g, s):
  """``s * g`` in at least float32, returned in ``g``'s dtype."""
  if isinstance(s, (int, float)):
    return s * g
  cdt = storage.compute_dtype(g.dtype)
  return (jnp.asarray(s).astype(cdt) * g.astype(cdt)).astype(g.dtype)


def _init_schedule(value: ScalarOrSchedule):
  """The init of a step driven by ``value``: a step count for a schedule."""

  def init_fn(params):
    if callable(value):
      return optax.ScaleByScheduleState(count=placement.counter(params))
    return optax.EmptyState()

  return init_fn


def _current_value(value: ScalarOrSchedule, state):
  """``value`` now (a schedule at the pre-increment count) and the next state."""
  if callable(value):
    count = optax.safe_increment(state.count)
    return value(state.count), optax.ScaleByScheduleState(count=count)
  return value, state


def scale_by_learning_rate(learning_rate: ScalarOrSchedule):
  """``updates * -learning_rate``; schedules see the pre-increment count."""

  def update_fn(updates, state, params=None):
    del params
    lr, state = _current_value(learning_rate, state)
    return jax.tree.map(lambda g: _scale_leaf(g, -lr), updates), state

  return optax.GradientTransformation(_init_schedule(learning_rate), update_fn)


def add_decayed_weights(
  weight_decay: ScalarOrSchedule, mask: MaskOrFn, *, sign: int = 1
):
  """``updates + sign * weight_decay * params`` (decoupled weight decay)."""

  def update_fn(updates, state, params=None):
    validation.check_params(
      params,
      "weight_decay (decoupled, as in adamw)",
      "weight_decay=0.0",
      "updates",
      updates,
    )
    s, state = _current_value(weight_decay, state)
    if isinstance(s, (int, float)) and s == 0:
      return updates, state

    def decay(g, p):
      if g is None:
        return None
      cdt = storage.compute_dtype(g.dtype)
      s_c = rule.cast_hyperparameter(s, cdt)
      decayed = s_c * jnp.asarray(p).astype(cdt)
      g_c = g.astype(cdt)
      return (g_c + decayed if sign > 0 else g_c - decayed).astype(g.dtype)

    updates = jax.tree.map(decay, updates, params, is_leaf=validation.is_none)
    return updates, state

  tx = optax.GradientTransformation(_init_schedule(weight_decay), update_fn)
  return tx if mask is None else _checked_mask(optax.masked(tx, mask), mask)


def _checked_mask(masked: optax.GradientTransformation, mask: MaskOrFn):
  """``optax.masked`` whose mask is checked against the tree first, so that a
  mismatch names the first differing path instead of a pytree error."""

  def check(tree):
    treedef = jax.tree.structure(tree, is_leaf=validation.is_none)
    validation.mask_leaves("mask", mask, tree, treedef)

  def init_fn(params):
    check(params)
    return masked.init(params)

  def update_fn(updates, state, params=None):
    check(updates)  # optax.masked applies a mask function to the updates
    return masked.update(updates, state, params)

  return optax.GradientTransformation(init_fn, update_fn)


class KahanState(NamedTuple):
  """State of ``param_rounding="kahan"``: per parameter, the rounding error
  left by its last update (in the parameter's dtype; None for parameters of
  float32 or wider, which get plain updates)."""

  compensation: optax.Updates


def _low_precision(p: Any) -> bool:
  dtype = jnp.result_type(p)
  return jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32


def _kahan_updates() -> optax.GradientTransformation:
  r"""The last step of a chain with ``param_rounding="kahan"``.

  For a low-precision parameter :math:`\theta` with compensation :math:`c`
  and incoming update :math:`u` (everything widened to float32):
  :math:`s = \theta + c + u` is where the parameter should be, and the
  update returned is :math:`u' = \mathrm{round}(\mathrm{round}(s) - \theta)`
  (rounded to the update's dtype). ``optax.apply_updates`` then computes
  :math:`\theta' = \mathrm{round}(\theta + u')`, which this step computes
  too, keeping :math:`c' = s - \theta'` (rounded to the parameter's dtype)
  for the next step: what rounding took from one update is given back in the
  next (Kahan, 1965; the "Kahan summation" of torch-optimi and of
  Zamirai et al., 2020, for bfloat16 training).
  """

  def init_fn(params):
    return KahanState(
      compensation=jax.tree.map(
        lambda p: (
          storage.zeros(p, jnp.result_type(p), True) if _low_precision(p) else None
        ),
        params,
      )
    )

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(
        "param_rounding='kahan' needs the parameters: call"
        " update(grads, state, params)."
      )

    def step(u, c, p):
      if c is None or u is None:
        return u, c
      f32 = jnp.float32
      p32 = jnp.asarray(p).astype(f32)
      target = p32 + c.astype(f32) + u.astype(f32)
      u_new = (target.astype(p.dtype).astype(f32) - p32).astype(u.dtype)
      applied = (p32 + u_new.astype(f32)).astype(p.dtype)  # apply_updates' result
      return u_new, (target - applied.astype(f32)).astype(c.dtype)

    treedef = jax.tree.structure(updates, is_leaf=validation.is_none)
    pairs = [
      step(u, c, p)
      for u, c, p in zip(
        treedef.flatten_up_to(updates),
        treedef.flatten_up_to(state.compensation),
        treedef.flatten_up_to(params),
        strict=True,
      )
    ]
    new_u = treedef.unflatten([u for u, _ in pairs])
    return new_u, KahanState(compensation=treedef.unflatten([c for _, c in pairs]))

  return optax.GradientTransformation(init_fn, update_fn)


def chain_of(
  *steps: optax.GradientTransformation,
  average_decay: Any = None,
  average_mode: str = "paper",
  skip_nonfinite: bool = False,
  param_rounding: str | None = None,
) -> optax.GradientTransformationExtraArgs:
  """``optax.chain(*steps)``, plus the parameter average last when asked for
  (one flat chain, so without it the state is exactly optax's).

  ``steps[0]`` is a ``scale_by_adam``. ``update`` first checks that the state
  comes from this chain's ``init`` (naming the first difference). With
  ``skip_nonfinite`` (also set on ``steps[0]``, which keeps the count of
  skipped steps) a step with a non-finite gradient leaves the rest of the
  chain's state unchanged too (schedule counts, parameter average) and
  returns a zero update, whatever the later steps (weight decay) add.
  """
  averaging.check_average(average_decay, average_mode)
  if param_rounding is not None:
    validation.check_choice("param_rounding", param_rounding, ("kahan",))
    steps = (*steps, _kahan_updates())
  if average_decay is not None:
    steps = (*steps, averaging.average_params(average_decay, average_mode))
  chain = optax.chain(*steps)

  def update_fn(updates, state, params=None, **extra_args):
    validation.check_param_dtypes("updates", updates)
    adam_state = state[0] if isinstance(state, tuple) and state else None
    if states.is_adam_state(adam_state):  # name gradient paths
      field = states.tree_field(adam_state)
      validation.check_tree_matches(
        "updates",
        updates,
        f"state[0].{field}",
        packing.logical(getattr(adam_state, field)),
      )
    expected = jax.eval_shape(chain.init, updates)
    if jax.tree.structure(state) != jax.tree.structure(expected):
      # Compared as trees: how the moments are packed is not part of the
      # contract (a state stored either way steps the same).
      validation.check_state(packing.logical(state), packing.logical(expected))
    new_updates, new_state = chain.update(updates, state, params, **extra_args)
    if not skip_nonfinite:
      return new_updates, new_state
    return skip_after_adam(updates, new_updates, new_state, state)

  return optax.GradientTransformationExtraArgs(chain.init, update_fn)


def skip_after_adam(grads, updates, new_state, old_state):
  """A chain's step skipped when a gradient element is NaN or infinite: zero
  updates and ``old_state``, except ``new_state[0]``, the Adam state, which
  skipped the step itself (and counted it). Decided on the device."""
  finite = transform.all_finite(jax.tree.leaves(grads))

  def keep(new, old):
    return jnp.where(finite, new, old)

  rest = jax.tree.map(keep, tuple(new_state[1:]), tuple(old_state[1:]))
  zero = jax.tree.map(lambda u: keep(u, jnp.zeros_like(u)), updates)
  return zero, (new_state[0], *rest)


def adam(
  learning_rate: ScalarOrSchedule = 1e-3,
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  eps_root: jax.typing.ArrayLike = 0.0,
  mu_dtype: Any | None = None,
  *,
  nesterov: bool = False,
  nu_dtype: Any | None = None,
  amsgrad: bool = False,
  weight_decay: ScalarOrSchedule | None = None,
  mask: MaskOrFn = None,
  maximize: bool = False,
  bias_correction: bool = True,
  eps_hat: bool = False,
  average_decay: jax.typing.ArrayLike | None = None,
  average_mode: str = "paper",
  skip_nonfinite: bool = False,
  pack_small_leaves: bool = True,
  int8_min_size: int = storage.INT8_MIN_SIZE,
  moment_rounding: str = "stochastic",
  param_rounding: str | None = None,
  cautious: bool = False,
  update_clipping: bool = False,
  atan2: bool = False,
  atan2_a: jax.typing.ArrayLike = 1.27,
  atan2_b: jax.typing.ArrayLike = 1.0,
) -> optax.GradientTransformationExtraArgs:
  r"""The Adam optimizer, a drop-in for :func:`optax.adam`.

  With :math:`\alpha_t` the learning rate (or schedule value) and
  :math:`m_t, v_t, \hat m_t, \hat v_t` as in :func:`scale_by_adam`:

  .. math::

    u_t = -\alpha_t\, \hat m_t / \left(\sqrt{\hat v_t + \bar\varepsilon}
    + \varepsilon\right)

  Unlike optax, the moments are computed in at least float32 and the update
  comes back in the gradient's dtype, so float16/bfloat16 parameters do not
  produce NaN on zero gradients (optax #1754), under ``inject_hyperparams``
  (optax #1414), or break ``apply_if_finite`` (optax #1098).

  The keyword-only arguments go beyond optax (defaults: optax's math); see
  :func:`scale_by_adam` for their formulas. ``weight_decay`` here is PyTorch
  ``Adam``'s *coupled* L2 (:math:`g_t + \lambda\theta_{t-1}` enters the
  moments); for decoupled decay use :func:`adamw`. Together they reproduce
  ``torch.optim.Adam`` (``eps_hat=False``) and ``keras.optimizers.Adam``
  (``eps=1e-7, eps_hat=True``); the reproducing guide maps every argument.

  Args:
    learning_rate: step size :math:`\alpha` (>= 0) or a schedule of the step
      count. Defaults to the paper's 1e-3.
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the second moment, in [0, 1).
    eps: added to :math:`\sqrt{\hat v_t}` (outside the root), >= 0.
    eps_root: added to :math:`\hat v_t` inside the root, >= 0.
    mu_dtype: storage dtype of the first moment (``None``: the parameter's),
      or ``"int8"``/``"int4"`` (8- or 4-bit codes; see :func:`scale_by_adam`
      and the low-memory guide).
    nesterov: use Nesterov momentum (NAdam, Dozat 2016).
    nu_dtype: storage dtype of the second moment (``None``: the parameter's
      real dtype), ``"int8"``/``"int4"``, or ``"factored"`` (Adafactor's row
      and column means). Not in optax.
    amsgrad: PyTorch/Keras AMSGrad: the running maximum of the raw second
      moment, bias-corrected afterwards (:func:`amsgrad` is optax's variant).
    weight_decay: coupled L2 coefficient (>= 0) or schedule; needs ``params``
      in ``update``. ``None`` (the default): none.
    mask: where ``weight_decay`` applies: a tree of bools like the
      parameters (or a prefix of it) or a function of the parameters.
    maximize: ascend the objective (PyTorch's ``maximize``).
    bias_correction: False drops the :math:`1 - \beta^t` corrections (the
      paper's Section 3 ablation).
    eps_hat: add ``eps`` before bias correction (the paper's
      :math:`\hat\varepsilon`; Keras/TensorFlow).
    average_decay: if set, keep an exponential moving average of the
      parameters with this decay in [0, 1) in the state (the paper's Section
      7.2); read it with :func:`averaged_params`. ``update`` then needs
      ``params``.
    average_mode: ``"paper"`` (bias-corrected average from zero) or
      ``"keras"`` (Keras ``use_ema``: starts at the first updated parameters,
      no correction).
    skip_nonfinite: if any gradient element is NaN or infinite, skip the
      step: a zero update, and the whole state (moments, count, schedule
      counts, parameter average) unchanged except ``state[0].skipped``, which
      counts skipped steps. The decision stays on the device (no host
      synchronization) and works under ``jit``, sharding, ``MultiSteps`` and
      every storage dtype. Unlike ``optax.apply_if_finite`` there is no extra
      state wrapper and no error budget after which a non-finite step goes
      through. Without it, such an element gets a NaN update, as in optax.
    pack_small_leaves: store the moments of small leaves (fewer than 2**16
      elements, when the tree has at least 64 of them) packed in flat chunks
      and update each chunk in one pass: the same numbers, with a much faster
      step and compile on trees of many leaves (the performance guide).
      ``state[0].mu`` is then a :class:`PackedMoments` (``.unpack()`` gives
      the tree). False keeps one array per leaf, as optax does: the layout
      optax can continue from. ``update`` steps a state in either layout
      (one made by optax's ``init`` too) and returns it in the one it got.
    int8_min_size: with ``mu_dtype``/``nu_dtype`` ``"int8"``, ``"int4"``
      or ``"factored"``, leaves with fewer elements keep float32 moments
      (their scales would cost more than the codes save). A Python int >= 0.
    moment_rounding: how a moment is rounded into a storage dtype narrower
      than float32 (the default for bfloat16/float16 parameters, or a
      narrower ``mu_dtype``/``nu_dtype``): ``"stochastic"`` (the default)
      rounds up or down with the probabilities that keep the stored moment
      unbiased, from a hash of the step count and the element's position (no
      key; the same on every run and backend), so that a bfloat16
      :math:`v_t` decays at :math:`\beta_2 = 0.999`; ``"nearest"`` rounds to
      nearest, as optax does.
    param_rounding: how updates meet low-precision (bfloat16/float16)
      parameters. ``None``: as in optax, ``apply_updates`` rounds
      :math:`\theta + u` to the parameter's dtype, losing updates below half
      its ulp. ``"kahan"``: compensated summation (Kahan, 1965): the state
      keeps, per low-precision parameter, the rounding error of its last
      update (in the parameter's dtype: 2 bytes per parameter) and the update
      returned is the one after which ``optax.apply_updates`` lands on the
      correctly rounded sum of everything applied so far, so bf16-only
      training tracks float32 master weights. ``update`` then needs
      ``params``; float32 parameters get no buffer.
    cautious: Cautious Adam (Liang et al., 2024): no step against the
      gradient's sign (see :func:`scale_by_adam`).
    update_clipping: StableAdamW's per-tensor update clipping (Wortsman et
      al., 2023; see :func:`scale_by_adam`).
    atan2: Adam-atan2 (Everett et al., 2024): ``atan2`` replaces the division
      and ``eps`` (see :func:`scale_by_adam`).
    atan2_a: Adam-atan2's output scale, > 0.
    atan2_b: Adam-atan2's scale of :math:`\sqrt{\hat v_t}`, > 0.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import adam_jax
    >>> f = lambda x: jnp.sum(x ** 2)
    >>> solver = adam_jax.adam(learning_rate=0.003)
    >>> params = jnp.array([1., 2., 3.])
    >>> state = solver.init(params)
    >>> for _ in range(5):
    ...   updates, state = solver.update(jax.grad(f)(params), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> print(f"{f(params):.2f}")
    13.82

    PyTorch's ``Adam(lr=0.1, weight_decay=0.5, maximize=True)``, one step:

    >>> solver = adam_jax.adam(0.1, weight_decay=0.5, maximize=True)
    >>> params = jnp.array([1.0, -1.0])
    >>> updates, _ = solver.update(jnp.array([0.2, 0.2]), solver.init(params), params)
    >>> print(*(f"{x:+.4f}" for x in updates))  # -0.1 sign(-0.2 + 0.5 params)
    -0.1000 +0.1000

    With ``skip_nonfinite=True`` a NaN gradient costs nothing but a count:

    >>> solver = adam_jax.adam(0.1, skip_nonfinite=True)
    >>> state = solver.init(jnp.zeros(2))
    >>> updates, state = solver.update(jnp.array([jnp.nan, 1.0]), state)
    >>> print(updates, state[0].count, state[0].skipped)
    [0. 0.] 0 1

  References:
    Kingma & Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, ICLR 2015.

    Reddi, Kale & Kumar, `On the Convergence of Adam and Beyond
    <https://openreview.net/forum?id=ryQu7f-RZ>`_, ICLR 2018.
  """
  validation.check_scalar_or_schedule("learning_rate", learning_rate)
  return chain_of(
    transform.scale_by_adam(
      b1,
      b2,
      eps,
      eps_root,
      mu_dtype,
      nesterov=nesterov,
      nu_dtype=nu_dtype,
      amsgrad=amsgrad,
      maximize=maximize,
      bias_correction=bias_correction,
      eps_hat=eps_hat,
      weight_decay=weight_decay,
      mask=mask,
      skip_nonfinite=skip_nonfinite,
      pack_small_leaves=pack_small_leaves,
      int8_min_size=int8_min_size,
      moment_rounding=moment_rounding,
      cautious=cautious,
      update_clipping=update_clipping,
      atan2=atan2,
      atan2_a=atan2_a,
      atan2_b=atan2_b,
    ),
    scale_by_learning_rate(learning_rate),
    average_decay=average_decay,
    average_mode=average_mode,
    skip_nonfinite=skip_nonfinite,
    param_rounding=param_rounding,
  )


def adamw(
  learning_rate: ScalarOrSchedule = 1e-3,
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  eps_root: jax.typing.ArrayLike = 0.0,
  mu_dtype: Any | None = None,
  weight_decay: ScalarOrSchedule = 1e-4,
  mask: MaskOrFn = None,
  *,
  nesterov: bool = False,
  nu_dtype: Any | None = None,
  amsgrad: bool = False,
  maximize: bool = False,
  bias_correction: bool = True,
  eps_hat: bool = False,
  decouple_lr: bool = False,
  average_decay: jax.typing.ArrayLike | None = None,
  average_mode: str = "paper",
  skip_nonfinite: bool = False,
  pack_small_leaves: bool = True,
  int8_min_size: int = storage.INT8_MIN_SIZE,
  moment_rounding: str = "stochastic",
  param_rounding: str | None = None,
  cautious: bool = False,
  update_clipping: bool = False,
  atan2: bool = False,
  atan2_a: jax.typing.ArrayLike = 1.27,
  atan2_b: jax.typing.ArrayLike = 1.0,
) -> optax.GradientTransformationExtraArgs:
  r"""Adam with decoupled weight decay, a drop-in for :func:`optax.adamw`.

  With :math:`\lambda` the ``weight_decay`` and :math:`\theta_{t-1}` the
  parameters, the Adam direction gets the decay added before the learning
  rate scales both (as in optax, PyTorch and Keras ``AdamW``):

  .. math::

    u_t = -\alpha_t \left(\hat m_t / \left(\sqrt{\hat v_t + \bar\varepsilon}
    + \varepsilon\right) + \lambda_t\, \theta_{t-1}\right)

  With ``decouple_lr=True`` the decay is not multiplied by the learning rate
  (Loshchilov & Hutter's fully decoupled form; torch-optimi's
  ``decouple_lr``, composer's ``DecoupledAdamW``):

  .. math::

    u_t = -\alpha_t\, \hat m_t / \left(\sqrt{\hat v_t + \bar\varepsilon}
    + \varepsilon\right) - \lambda_t\, \theta_{t-1}

  so values of :math:`\lambda` are about :math:`\alpha` times smaller. To
  make the decay follow a learning-rate schedule :math:`\alpha_t` with peak
  :math:`\alpha_{\max}` (as those libraries do), pass
  ``weight_decay=lambda t: wd * schedule(t) / peak``.

  Args:
    learning_rate: step size (>= 0) or schedule.
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the second moment, in [0, 1).
    eps: added to :math:`\sqrt{\hat v_t}`, >= 0.
    eps_root: added inside the root, >= 0.
    mu_dtype: storage dtype of the first moment.
    weight_decay: :math:`\lambda` (>= 0) or a schedule of the step count.
    mask: a tree of booleans like the parameters (or a prefix of it), or a
      function of the parameters returning one: where False, no decay.
    nesterov: use Nesterov momentum (NAdamW).
    nu_dtype: storage dtype of the second moment. Not in optax.
    amsgrad: PyTorch/Keras AMSGrad (see :func:`adam`).
    maximize: ascend the objective; the decay still shrinks the parameters
      (as in PyTorch).
    bias_correction: False drops the :math:`1 - \beta^t` corrections.
    eps_hat: add ``eps`` before bias correction (Keras/TensorFlow).
    decouple_lr: do not multiply the decay by the learning rate.
    average_decay: keep a parameter average in the state (see :func:`adam`).
    average_mode: ``"paper"`` or ``"keras"`` (see :func:`adam`).
    skip_nonfinite: skip steps with a NaN/infinite gradient (see :func:`adam`).
    pack_small_leaves: pack small leaves' moments (see :func:`adam`).
    int8_min_size: float32 below this size with int8 storage (see :func:`adam`).
    moment_rounding: ``"stochastic"`` or ``"nearest"`` rounding of moments
      stored in a narrower float (see :func:`adam`).
    param_rounding: ``"kahan"`` for compensated bf16/f16 updates (see
      :func:`adam`).

    cautious: as in :func:`adam`; the decay is not masked.
    update_clipping: StableAdamW (Wortsman et al., 2023): as in :func:`adam`,
      and the clip divides the decay term too, :math:`u_t = -\alpha_t
      (\hat m_t / (\sqrt{\hat v_t} + \varepsilon) + \lambda_t
      \theta_{t-1}) / \max(1, \mathrm{RMS}_t)`; the decay then runs inside
      the first step of the chain (two steps instead of three).
    atan2: Adam-atan2, as in :func:`adam` (the decay is added to it).
    atan2_a: Adam-atan2's output scale, > 0.
    atan2_b: Adam-atan2's scale of :math:`\sqrt{\hat v_t}`, > 0.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`; ``update`` needs
    ``params``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import adam_jax
    >>> params = {"w": jnp.ones(2), "b": jnp.ones(2)}
    >>> solver = adam_jax.adamw(0.1, weight_decay=0.5,
    ...                         mask={"w": True, "b": False})
    >>> state = solver.init(params)
    >>> zero = {"w": jnp.zeros(2), "b": jnp.zeros(2)}
    >>> updates, state = solver.update(zero, state, params)
    >>> print(updates["w"], updates["b"] == 0)  # only w decays: -0.1 * 0.5 * 1
    [-0.05 -0.05] [ True  True]
    >>> solver = adam_jax.adamw(0.1, weight_decay=0.5, decouple_lr=True)
    >>> updates, _ = solver.update(zero, solver.init(params), params)
    >>> print(updates["w"])  # -0.5 * 1, not scaled by the learning rate
    [-0.5 -0.5]

  References:
    Loshchilov & Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, ICLR 2019.
  """
  validation.check_scalar_or_schedule("learning_rate", learning_rate)
  validation.check_scalar_or_schedule("weight_decay", weight_decay)
  validation.check_bool("decouple_lr", decouple_lr)
  validation.check_mask("mask", mask)
  validation.check_bool("update_clipping", update_clipping)
  if update_clipping and decouple_lr:
    validation.check_combination(
      "update_clipping=True",
      "decouple_lr=True",
      "StableAdamW scales the decay with the learning rate and the clip",
    )
  common: dict[str, Any] = dict(
    nesterov=nesterov,
    nu_dtype=nu_dtype,
    amsgrad=amsgrad,
    maximize=maximize,
    bias_correction=bias_correction,
    eps_hat=eps_hat,
    skip_nonfinite=skip_nonfinite,
    pack_small_leaves=pack_small_leaves,
    int8_min_size=int8_min_size,
    moment_rounding=moment_rounding,
    cautious=cautious,
    atan2=atan2,
    atan2_a=atan2_a,
    atan2_b=atan2_b,
  )
  lr = scale_by_learning_rate(learning_rate)
  steps: tuple[optax.GradientTransformation, ...]
  if update_clipping:  # the clip scales the decay too: it joins the rule
    cfg = transform.adam_config(
      b1,
      b2,
      eps,
      eps_root,
      mu_dtype,
      weight_decay=weight_decay,
      mask=mask,
      decoupled=True,
      update_clipping=True,
      **common,
    )
    steps = (transform.adam_family(cfg), lr)
  else:
    scale = transform.scale_by_adam(b1, b2, eps, eps_root, mu_dtype, **common)
    if decouple_lr:
      steps = (scale, lr, add_decayed_weights(weight_decay, mask, sign=-1))
    else:
      steps = (scale, add_decayed_weights(weight_decay, mask), lr)
  return chain_of(
    *steps,
    average_decay=average_decay,
    average_mode=average_mode,
    skip_nonfinite=skip_nonfinite,
    param_rounding=param_rounding,
  )


def nadam(
  learning_rate: ScalarOrSchedule = 1e-3,
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  eps_root: jax.typing.ArrayLike = 0.0,
  mu_dtype: Any | None = None,
  *,
  nesterov: bool = True,
  nu_dtype: Any | None = None,
  skip_nonfinite: bool = False,
  pack_small_leaves: bool = True,
  int8_min_size: int = storage.INT8_MIN_SIZE,
  moment_rounding: str = "stochastic",
  param_rounding: str | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""NAdam: :func:`adam` with Nesterov momentum, a drop-in for ``optax.nadam``.

  .. math::

    \hat m_t = \beta_1 m_t / (1 - \beta_1^{t+1}) + (1 - \beta_1)\, g_t /
    (1 - \beta_1^t)

  and otherwise as :func:`adam`. Arguments as :func:`adam`.

  Example:
    >>> import jax.numpy as jnp
    >>> import adam_jax
    >>> solver = adam_jax.nadam(0.1)
    >>> state = solver.init(jnp.zeros(2))
    >>> updates, _ = solver.update(jnp.array([1.0, -1.0]), state)
    >>> print(*(f"{x:+.4f}" for x in updates))  # 0.1 * (0.9 * 0.1 / 0.19 + 1)
    -0.1474 +0.1474

  References:
    Dozat, `Incorporating Nesterov Momentum into Adam
    <https://openreview.net/pdf?id=OM0jvwB8jIp57ZJjtNEZ>`_, 2016.
  """
  return adam(
    learning_rate,
    b1,
    b2,
    eps,
    eps_root,
    mu_dtype,
    nesterov=nesterov,
    nu_dtype=nu_dtype,
    skip_nonfinite=skip_nonfinite,
    pack_small_leaves=pack_small_leaves,
    int8_min_size=int8_min_size,
    moment_rounding=moment_rounding,
    param_rounding=param_rounding,
  )


def nadamw(
  learning_rate: ScalarOrSchedule = 1e-3,
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  eps_root: jax.typing.ArrayLike = 0.0,
  mu_dtype: Any | None = None,
  weight_decay: ScalarOrSchedule = 1e-4,
  mask: MaskOrFn = None,
  *,
  nesterov: bool = True,
  nu_dtype: Any | None = None,
  skip_nonfinite: bool = False,
  pack_small_leaves: bool = True,
  int8_min_size: int = storage.INT8_MIN_SIZE,
  moment_rounding: str = "stochastic",
  param_rounding: str | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""NAdamW: :func:`adamw` with Nesterov momentum, a drop-in for ``optax.nadamw``.

  The first moment is corrected as in :func:`nadam`; the decoupled weight decay
  is as in :func:`adamw`. Arguments as :func:`adamw`.

  Example:
    >>> import jax.numpy as jnp
    >>> import adam_jax
    >>> solver = adam_jax.nadamw(0.1, weight_decay=0.0)
    >>> params = jnp.ones(2)
    >>> updates, _ = solver.update(jnp.array([1.0, -1.0]), solver.init(params), params)
    >>> print(*(f"{x:+.4f}" for x in updates))
    -0.1474 +0.1474

  References:
    Dozat, `Incorporating Nesterov Momentum into Adam
    <https://openreview.net/pdf?id=OM0jvwB8jIp57ZJjtNEZ>`_, 2016.

    Loshchilov & Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, ICLR 2019.
  """
  return adamw(
    learning_rate,
    b1,
    b2,
    eps,
    eps_root,
    mu_dtype,
    weight_decay,
    mask,
    nesterov=nesterov,
    nu_dtype=nu_dtype,
    skip_nonfinite=skip_nonfinite,
    pack_small_leaves=pack_small_leaves,
    int8_min_size=int8_min_size,
    moment_rounding=moment_rounding,
    param_rounding=param_rounding,
  )


def amsgrad(
  learning_rate: ScalarOrSchedule = 1e-3,
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  eps_root: jax.typing.ArrayLike = 0.0,
  mu_dtype: Any | None = None,
  bias_correction_mu: bool = True,
  bias_correction_nu: bool = True,
  *,
  skip_nonfinite: bool = False,
  pack_small_leaves: bool = True,
  int8_min_size: int = storage.INT8_MIN_SIZE,
  moment_rounding: str = "stochastic",
  param_rounding: str | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""AMSGrad with optax's semantics, a drop-in for :func:`optax.amsgrad`.

  The running maximum is taken of the *bias-corrected* second moment
  (optax's choice):

  .. math::

    \hat v^{\max}_t = \max\left(\hat v^{\max}_{t-1},\ v_t / (1 - \beta_2^t)
    \right), \qquad
    u_t = -\alpha_t\, \hat m_t / \left(\sqrt{\hat v^{\max}_t +
    \bar\varepsilon} + \varepsilon\right)

  PyTorch and Keras instead take the maximum of the raw :math:`v_t` and bias
  correct afterwards, which is ``adam(..., amsgrad=True)``; the results differ
  while :math:`1 - \beta_2^t` is far from 1 (optax's maximum keeps early
  moments at their larger early corrections). The state keeps the maximum in
  ``nu_max``.

  Args:
    learning_rate: step size (>= 0) or schedule.
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the second moment, in [0, 1).
    eps: added outside the root, >= 0.
    eps_root: added inside the root, >= 0.
    mu_dtype: storage dtype of the first moment.
    bias_correction_mu: bias-correct :math:`m_t` (False: the AMSGrad paper).
    bias_correction_nu: bias-correct :math:`v_t` before the maximum (False:
      the AMSGrad paper).
    skip_nonfinite: skip steps with a NaN/infinite gradient (see :func:`adam`).
    pack_small_leaves: pack small leaves' moments (see :func:`adam`).
    int8_min_size: float32 below this size with int8 storage (see :func:`adam`).
    moment_rounding: ``"stochastic"`` or ``"nearest"`` rounding of moments
      stored in a narrower float (see :func:`adam`).
    param_rounding: ``"kahan"`` for compensated bf16/f16 updates (see
      :func:`adam`).

  Example:
    >>> import jax.numpy as jnp
    >>> import adam_jax
    >>> solver = adam_jax.amsgrad(0.1)
    >>> state = solver.init(jnp.zeros(2))
    >>> updates, state = solver.update(jnp.array([2.0, -1.0]), state)
    >>> print(*(f"{x:+.4f}" for x in updates), state[0].nu_max.round(3))
    -0.1000 +0.1000 [4. 1.]

  References:
    Reddi, Kale & Kumar, `On the Convergence of Adam and Beyond
    <https://openreview.net/forum?id=ryQu7f-RZ>`_, ICLR 2018.
  """
  validation.check_scalar_or_schedule("learning_rate", learning_rate)
  cfg = checked_config(
    b1,
    b2,
    eps,
    eps_root,
    mu_dtype,
    None,
    False,
    amsgrad="corrected",
    bias_correction_mu=bias_correction_mu,
    bias_correction_nu=bias_correction_nu,
    skip_nonfinite=skip_nonfinite,
    pack_small_leaves=pack_small_leaves,
    int8_min_size=int8_min_size,
    moment_rounding=moment_rounding,
  )
  return chain_of(
    transform.adam_family(cfg),
    scale_by_learning_rate(learning_rate),
    skip_nonfinite=skip_nonfinite,
    param_rounding=param_rounding,
  )


def adamax(
  learning_rate: ScalarOrSchedule = 1e-3,
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  *,
  weight_decay: ScalarOrSchedule | None = None,
  mask: MaskOrFn = None,
  maximize: bool = False,
  average_decay: jax.typing.ArrayLike | None = None,
  average_mode: str = "paper",
  skip_nonfinite: bool = False,
  pack_small_leaves: bool = True,
  int8_min_size: int = storage.INT8_MIN_SIZE,
  moment_rounding: str = "stochastic",
  param_rounding: str | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""AdaMax (Kingma & Ba, 2015, §7.1), a drop-in for :func:`optax.adamax`.

  The second moment becomes an exponentially weighted infinity norm, which
  needs no bias correction:

  .. math::

    m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t \\
    u_t &= \max\left(\beta_2 u_{t-1},\ |g_t| + \varepsilon\right) \\
    \Delta_t &= -\alpha_t\, m_t / \left((1 - \beta_1^t)\, u_t\right)

  (``eps`` inside the maximum, as in optax and ``torch.optim.Adamax``; the
  paper has none, Keras adds it to :math:`u_t` afterwards.) The state's
  ``nu`` holds :math:`u_t`. The keyword-only arguments match PyTorch's
  ``Adamax``: ``weight_decay`` is coupled (:math:`g_t + \lambda
  \theta_{t-1}` enters both moments) and ``maximize`` ascends.

  Args:
    learning_rate: step size (>= 0) or schedule. (The paper and PyTorch use
      2e-3.)
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the infinity norm, in [0, 1).
    eps: added to :math:`|g_t|`, >= 0.
    weight_decay: coupled L2 coefficient (>= 0) or schedule; ``None``: none.
    mask: where ``weight_decay`` applies (as in :func:`adam`).
    maximize: ascend the objective.
    average_decay: keep a parameter average in the state (see :func:`adam`).
    average_mode: ``"paper"`` or ``"keras"`` (see :func:`adam`).
    skip_nonfinite: skip steps with a NaN/infinite gradient (see :func:`adam`).
    pack_small_leaves: pack small leaves' moments (see :func:`adam`).
    int8_min_size: float32 below this size with int8 storage (see :func:`adam`).
    moment_rounding: ``"stochastic"`` or ``"nearest"`` rounding of moments
      stored in a narrower float (see :func:`adam`).
    param_rounding: ``"kahan"`` for compensated bf16/f16 updates (see
      :func:`adam`).

  Example:
    >>> import jax.numpy as jnp
    >>> import adam_jax
    >>> solver = adam_jax.adamax(0.1)
    >>> state = solver.init(jnp.zeros(2))
    >>> updates, state = solver.update(jnp.array([2.0, -1.0]), state)
    >>> print(*(f"{x:+.4f}" for x in updates), state[0].nu)
    -0.1000 +0.1000 [2. 1.]

  References:
    Kingma & Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, ICLR 2015, Section 7.1.
  """
  validation.check_scalar_or_schedule("learning_rate", learning_rate)
  cfg = _adamax_config(
    b1,
    b2,
    eps,
    weight_decay=weight_decay,
    weight_decay_mask=mask,
    maximize=maximize,
    skip_nonfinite=skip_nonfinite,
    pack_small_leaves=pack_small_leaves,
    int8_min_size=int8_min_size,
    moment_rounding=moment_rounding,
  )
  return chain_of(
    transform.adam_family(cfg),
    scale_by_learning_rate(learning_rate),
    average_decay=average_decay,
    average_mode=average_mode,
    skip_nonfinite=skip_nonfinite,
    param_rounding=param_rounding,
  )


def _adamax_config(b1, b2, eps, **options):
  """AdaMax's checked configuration (``weight_decay`` in ``options`` is
  coupled)."""
  return checked_config(b1, b2, eps, 0.0, None, None, False, norm="max", **options)


def adamaxw(
  learning_rate: ScalarOrSchedule = 1e-3,
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  weight_decay: ScalarOrSchedule = 1e-4,
  mask: MaskOrFn = None,
  *,
  maximize: bool = False,
  average_decay: jax.typing.ArrayLike | None = None,
  average_mode: str = "paper",
  skip_nonfinite: bool = False,
  pack_small_leaves: bool = True,
  moment_rounding: str = "stochastic",
  param_rounding: str | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""AdaMax with decoupled weight decay, a drop-in for :func:`optax.adamaxw`.

  :func:`adamax`'s step with :math:`\lambda \theta_{t-1}` added before the
  learning rate, as :func:`adamw` does for Adam:

  .. math::

    \Delta_t = -\alpha_t \left(m_t / ((1 - \beta_1^t)\, u_t) + \lambda
    \theta_{t-1}\right)

  Args:
    learning_rate: step size (>= 0) or schedule.
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the infinity norm, in [0, 1).
    eps: added to :math:`|g_t|`, >= 0.
    weight_decay: decoupled decay :math:`\lambda` (>= 0) or schedule.
    mask: where ``weight_decay`` applies (as in :func:`adamw`).
    maximize: ascend the objective.
    average_decay: keep a parameter average in the state (see :func:`adam`).
    average_mode: ``"paper"`` or ``"keras"`` (see :func:`adam`).
    skip_nonfinite: skip steps with a NaN/infinite gradient (see :func:`adam`).
    pack_small_leaves: pack small leaves' moments (see :func:`adam`).
    moment_rounding: ``"stochastic"`` or ``"nearest"`` rounding of moments
      stored in a narrower float (see :func:`adam`).
    param_rounding: ``"kahan"`` for compensated bf16/f16 updates (see
      :func:`adam`).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`.

  Example:
    >>> import jax.numpy as jnp
    >>> import adam_jax
    >>> solver = adam_jax.adamaxw(0.1, weight_decay=0.5)
    >>> params = jnp.ones(2)
    >>> state = solver.init(params)
    >>> updates, _ = solver.update(jnp.array([2.0, -1.0]), state, params)
    >>> print(*(f"{x:+.4f}" for x in updates))  # -0.1 (sign(g) + 0.5 params)
    -0.1500 +0.0500

  References:
    Kingma & Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, ICLR 2015, Section 7.1.

    Loshchilov & Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, ICLR 2019.
  """
  validation.check_scalar_or_schedule("learning_rate", learning_rate)
  validation.check_scalar_or_schedule("weight_decay", weight_decay)
  validation.check_mask("mask", mask)
  cfg = _adamax_config(
    b1,
    b2,
    eps,
    maximize=maximize,
    skip_nonfinite=skip_nonfinite,
    pack_small_leaves=pack_small_leaves,
    moment_rounding=moment_rounding,
  )
  return chain_of(
    transform.adam_family(cfg),
    add_decayed_weights(weight_decay, mask),
    scale_by_learning_rate(learning_rate),
    average_decay=average_decay,
    average_mode=average_mode,
    skip_nonfinite=skip_nonfinite,
    param_rounding=param_rounding,
  )
