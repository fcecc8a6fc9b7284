"""``scale_by_adam``: the Adam rule over a tree of parameters.

``adam_family`` builds the ``GradientTransformation`` of one configuration:
``init`` makes the moments in their storage (``storage``), packed for trees
of many small leaves (``packing``); ``update`` hands each leaf, or each packed
chunk, to the rule (``rule.leaf_step``) through its storage. The public
``scale_by_adam`` and the aliases (``amsgrad``, ``adamax``) are
configurations of that one builder.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from adam_jax._src import packing
from adam_jax._src import placement
from adam_jax._src import rule
from adam_jax._src import state as states
from adam_jax._src import storage
from adam_jax._src import validation
from adam_jax._src.config import Config
from adam_jax._src.config import checked_config
from adam_jax._src.config import has_weight_decay


def adam_family(cfg: Config) -> optax.GradientTransformation:
  """Builds the transformation for one configuration of the Adam family."""

  def init_fn(params):
    validation.check_param_dtypes("params", params)
    return _init(cfg, params)

  def update_fn(updates, state, params=None):
    validation.check_param_dtypes("updates", updates)
    check_state(cfg, updates, state)
    g_leaves, treedef = jax.tree.flatten(updates, is_leaf=validation.is_none)
    g_leaves = [None if g is None else jnp.asarray(g) for g in g_leaves]
    _check_variant_dtypes(cfg, g_leaves)
    p_leaves, wd_leaves = _coupled_decay(cfg, state, params, treedef, len(g_leaves))
    clock = rule.Clock(cfg, optax.safe_increment(state.count), **_values(cfg, state))
    finite = all_finite(g_leaves) if cfg.skip_nonfinite else None
    leaf_step = functools.partial(_stored_step, clock, finite)
    moments = states.moments_of(state)
    if packing.is_packed(moments[1]):
      one = clock.one(jnp.float32)
      u_leaves, new = packing.packed_step(
        moments[1].layout, leaf_step, g_leaves, moments, p_leaves, wd_leaves, one
      )
      u = treedef.unflatten(u_leaves)
    else:
      args = (leaf_step, treedef, g_leaves, moments, p_leaves, wd_leaves)
      u, *new = _per_leaf(*args)
    count, skipped = clock.t, None
    if finite is not None:
      count = jnp.where(finite, clock.t, state.count)
      skipped = jnp.where(finite, state.skipped, optax.safe_increment(state.skipped))
    return u, states.make_state(cfg, count, new, skipped)

  return optax.GradientTransformation(init_fn, update_fn)


def _values(cfg: Config, state: Any) -> dict[str, Any]:
  """The per-step values the rule reads besides the count: AdEMAMix's ``b3``
  and ``alpha`` (schedules of ``count_m2``), ADOPT's first-step flag and
  clip value (of the count before the increment, as optax)."""
  values: dict[str, Any] = {}
  if cfg.slow:
    for key, value in (("b3", cfg.slow_b3), ("alpha", cfg.slow_alpha)):
      values[key] = value(state.count_m2) if callable(value) else value
  if cfg.adopt:
    values["first"] = state.count == 0
    if cfg.adopt_clip is not None:
      values["clip"] = cfg.adopt_clip(state.count)
  return values


def _check_variant_dtypes(cfg: Config, g_leaves: list[Any]) -> None:
  """The variant options are defined for real gradients only."""
  options = [
    name
    for name, on in (
      ("cautious", cfg.cautious),
      ("update_clipping", cfg.update_clipping),
      ("atan2", cfg.atan2),
      ("ADOPT", cfg.adopt),
      ("RAdam's rectification", cfg.rectify_threshold is not None),
      ("AdEMAMix's slow EMA", cfg.slow),
    )
    if on
  ]
  if not options:
    return
  for g in g_leaves:
    if g is not None and jnp.iscomplexobj(g):
      raise TypeError(
        f"{options[0]} is defined for real parameters, got a {g.dtype} gradient:"
        " use the plain Adam rule (adam_jax.adam) for complex parameters."
      )


def _init(cfg: Config, params: Any) -> Any:
  """A zero state for ``params``: each moment in its storage, the moments of
  many small leaves packed (``packing.plan``)."""

  def mu_dtype(p):
    return storage.first_moment_dtype(cfg.mu_dtype, p, cfg.int8_min_size)

  def nu_dtype(p):
    return storage.second_moment_dtype(cfg.nu_dtype, p, cfg.int8_min_size)

  def group(p):  # None: the leaf keeps its own arrays
    key = mu_dtype(p), nu_dtype(p), jnp.result_type(p)
    if storage.INT8 in key and not storage.int8.flat_blocks(jnp.shape(p)):
      return None  # a flat chunk would cut its blocks otherwise
    if storage.INT4 in key or storage.FACTORED in key:
      return None  # rows, columns and packed pairs follow the leaf's shape
    return key

  def align(group):  # packed 8-bit moments align their leaves to whole blocks
    return storage.int8.BLOCK if storage.INT8 in group else 1

  layout, placements = None, list[Any]()
  # Per-tensor statistics (cautious, update clipping) need each leaf alone.
  if cfg.pack_small_leaves and not cfg.per_tensor:
    unboxed = validation.unboxed(params)
    leaves, treedef = jax.tree.flatten(unboxed, is_leaf=validation.is_none)
    layout, placements = packing.plan(leaves, treedef, group, align_of=align)

  def moment(dtype_for, signed):
    if layout is None or not layout.chunk_sizes:  # optax's: an array per leaf
      return _zeros_per_leaf(params, dtype_for, signed)
    return packing.zeros(layout, placements, leaves, dtype_for, signed)

  count = placement.counter(params)
  mu = moment(mu_dtype, signed=True)
  moments = (
    mu if cfg.first_moment else None,
    moment(nu_dtype, signed=False),
    moment(nu_dtype, signed=False) if cfg.amsgrad else None,
    moment(mu_dtype, signed=True) if cfg.slow else None,
  )
  skipped = placement.counter(params) if cfg.skip_nonfinite else None
  return states.make_state(cfg, count, moments, skipped)


def _zeros_per_leaf(params: Any, dtype_for, signed: bool) -> Any:
  """A zero moment per leaf of ``params``, in optax's layout. A leaf boxed by
  a framework (Flax NNX's ``Variable``) keeps its box when its moment is one
  array, as optax's moments do; an 8-bit moment (two arrays) takes the box's
  place, since such a box holds one array."""

  def zeros(x):
    if validation.is_box(x):
      p = jax.tree.leaves(x)[0]
      if dtype_for(p) in storage.CODED:
        return storage.zeros(p, dtype_for(p), signed)
    return jax.tree.map(lambda p: storage.zeros(p, dtype_for(p), signed), x)

  return jax.tree.map(zeros, params, is_leaf=_none_or_box)


def _none_or_box(x: Any) -> bool:
  return x is None or validation.is_box(x)


def _stored_step(clock: rule.Clock, finite, g, stored, p, wd):
  """:func:`rule.leaf_step` on stored moments ``(m, v, v_max, slow)``:
  decoded before the rule and encoded after it. With ``finite``
  (``skip_nonfinite``) a step with a non-finite gradient returns a zero
  update and the stored moments unchanged."""
  decoded = [None if x is None else storage.decoded(x) for x in stored]
  # Moments that settling already encoded (a factored v: its means), by
  # their index in ``stored``.
  coded: dict[int, Any] = {}

  def settle(new):
    one = clock.one(jnp.float32)
    out = []
    for i, x in zip((0, 1, 3), new, strict=True):
      if x is not None:
        x, coded[i] = storage.settled(x, stored[i], one.astype(x.dtype))
      out.append(x)
    return tuple(out)

  u, *new = rule.leaf_step(clock, g, decoded, p, wd, settle=settle)
  out = (u, *storage.encoded(new, list(stored), coded))
  if finite is None:
    return out
  old = (jnp.zeros_like(g), *stored)
  return tuple(
    None if x is None else jax.tree.map(lambda a, b: jnp.where(finite, a, b), x, y)
    for x, y in zip(out, old, strict=True)
  )


def _per_leaf(leaf_step, treedef, g_leaves, moments, p_leaves, wd_leaves):
  """``leaf_step`` on each leaf of an unpacked state: ``(u, *moments)``,
  ``u`` in the gradients' structure (``treedef``) and each moment in its own
  (None where the state keeps none). The moments' structure may differ from
  the gradients' by single-array boxes (``validation.is_box``), which keep
  the leaves' order."""
  flat, defs = [], []
  for tree in moments:
    leaves, tdef = jax.tree.flatten(tree, is_leaf=_none_or_stored)
    flat.append([None] * len(g_leaves) if tree is None else leaves)
    defs.append(None if tree is None else tdef)
  width = len(moments) + 1
  outs = [
    (None,) * width if g is None else leaf_step(g, ms, p, wd)
    for g, *ms, p, wd in zip(g_leaves, *flat, p_leaves, wd_leaves, strict=True)
  ]
  columns = list(zip(*outs, strict=True)) if outs else [()] * width
  u = treedef.unflatten(list(columns[0]))
  return u, *(
    None if tdef is None else tdef.unflatten(list(col))
    for tdef, col in zip(defs, columns[1:], strict=True)
  )


def _none_or_stored(x: Any) -> bool:
  return x is None or storage.is_coded(x)


def check_state(cfg: Config, updates: Any, state: Any) -> None:
  """Checks, at trace time, that ``state`` is the state ``init`` of this
  configuration makes (or optax's ``init`` of its namesake: the same class)
  for parameters like ``updates``, in any of the layouts ``init`` gives
  (per leaf or packed, boxed or not)."""
  expected = states.state_class(cfg)
  if not isinstance(state, expected):
    raise TypeError(
      f"state must be the {_class_name(expected)} that init returns for"
      f" these options, got {_described_state(state)}. Was the state made by"
      " another optimizer, or with other amsgrad/skip_nonfinite options? Call"
      " init with this optimizer."
    )
  field = states.tree_field(state)
  validation.check_tree_matches(
    "updates", updates, f"state.{field}", packing.logical(getattr(state, field))
  )
  checks = (("mu", cfg.mu_dtype), ("m1", cfg.mu_dtype), ("nu", cfg.nu_dtype))
  for field, dtype in checks:
    if dtype is None or field not in state._fields:
      continue
    # Coded storage keeps small leaves in float32.
    if dtype in storage.CODED:
      allowed, shown = {dtype, "float32"}, repr(dtype)
    else:
      allowed = {shown := jnp.dtype(dtype).name}
    tree = getattr(state, field)
    for path, x in validation.leaf_paths(tree, is_leaf=storage.is_coded):
      if x is None:
        continue
      stored = storage.kind(x)
      if stored not in allowed:
        raise ValueError(
          f"state.{field}{path} is stored in {stored} but this optimizer has"
          f" {field}_dtype={shown}: the state comes from another configuration."
          " Call init with this optimizer."
        )


def _class_name(cls: type) -> str:
  package = cls.__module__.split(".")[0]
  return f"{package}.{cls.__qualname__}"


def _described_state(state: Any) -> str:
  if states.is_adam_state(state):
    return f"{_class_name(type(state))} with fields {state._fields}"
  return f"a {_class_name(type(state))}"


def all_finite(leaves: list[Any]) -> jax.Array:
  """True when no element of any leaf is NaN or infinite (a traced bool).

  Each leaf is reduced on its own (a scalar per leaf, so a sharded leaf needs
  no gather), and the per-leaf flags are combined by one argmin over their
  vector: the first False, if any. Combined with ``and`` (or ``all``, which
  XLA's simplifier turns back into a chain of ``and``), the chain is cheap
  enough for XLA to copy into every fusion that reads the flag, one per state
  leaf, and compile time grows with the square of the number of leaves; an
  argmin stays one reduction that each of them reads.
  """
  flags = [jnp.all(jnp.isfinite(g)) for g in leaves if g is not None]
  if not flags:
    return jnp.asarray(True)
  stacked = jnp.stack(flags)
  return stacked[jnp.argmin(stacked)]


def _coupled_decay(cfg: Config, state, params, treedef, n: int):
  """Per-leaf parameters and coupled decay rates (None where masked out, or
  everywhere without coupled decay)."""
  if not has_weight_decay(cfg):
    return [None] * n, [None] * n
  validation.check_params(
    params,
    "weight_decay (decoupled)" if cfg.decoupled else "weight_decay (coupled L2)",
    "weight_decay=0.0" if cfg.decoupled else "weight_decay=None",
    f"state.{states.tree_field(state)}",
    packing.logical(getattr(state, states.tree_field(state))),
  )
  count = state.count
  wd = cfg.weight_decay(count) if callable(cfg.weight_decay) else cfg.weight_decay
  flags = validation.mask_leaves("mask", cfg.weight_decay_mask, params, treedef)
  p_leaves = treedef.flatten_up_to(params)
  return p_leaves, [wd if flag else None for flag in flags]


def scale_by_adam(
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  eps_root: jax.typing.ArrayLike = 0.0,
  mu_dtype: jax.typing.DTypeLike | None = None,
  *,
  nesterov: bool = False,
  nu_dtype: jax.typing.DTypeLike | None = None,
  amsgrad: bool = False,
  maximize: bool = False,
  bias_correction: bool = True,
  eps_hat: bool = False,
  weight_decay: optax.ScalarOrSchedule | None = None,
  mask: Any = None,
  skip_nonfinite: bool = False,
  pack_small_leaves: bool = True,
  int8_min_size: int = storage.INT8_MIN_SIZE,
  moment_rounding: str = "stochastic",
  cautious: bool = False,
  update_clipping: bool = False,
  atan2: bool = False,
  atan2_a: jax.typing.ArrayLike = 1.27,
  atan2_b: jax.typing.ArrayLike = 1.0,
) -> optax.GradientTransformation:
  r"""Rescales updates by the Adam rule (Kingma & Ba, 2015, Algorithm 1).

  A drop-in for :func:`optax.scale_by_adam` (same arguments, same state
  fields, same numbers in float32) that computes its moments in at least
  float32 whatever they are stored in and returns updates in the gradient's
  dtype. With :math:`g_t` the gradient, :math:`\beta_1, \beta_2,
  \varepsilon, \bar\varepsilon` the arguments ``b1``, ``b2``, ``eps``,
  ``eps_root`` and :math:`t` the step count (starting at 1):

  .. math::

    m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t \\
    v_t &= \beta_2 v_{t-1} + (1 - \beta_2)\, |g_t|^2 \\
    \hat m_t &= m_t / (1 - \beta_1^t), \qquad
    \hat v_t = v_t / (1 - \beta_2^t) \\
    u_t &= \hat m_t / \left(\sqrt{\hat v_t + \bar\varepsilon} + \varepsilon
    \right)

  The learning rate is applied afterwards (see :func:`adam`). The keyword-only
  switches reproduce the other Adams in use (all default to optax's math):

  * ``nesterov=True``: :math:`\hat m_t = \beta_1 m_t / (1 - \beta_1^{t+1}) +
    (1 - \beta_1) g_t / (1 - \beta_1^t)` (Dozat, 2016), as in optax.
  * ``amsgrad=True``: :math:`v^{\max}_t = \max(v^{\max}_{t-1}, v_t)` replaces
    :math:`v_t` before bias correction (PyTorch and Keras; kept in the state's
    ``nu_max``). :func:`amsgrad` keeps optax's variant, the maximum of
    :math:`\hat v_t`.
  * ``maximize=True``: :math:`g_t \to -g_t` (gradient ascent, PyTorch).
  * ``weight_decay=`` :math:`\lambda`: coupled L2, :math:`g_t \to g_t +
    \lambda \theta_{t-1}` before the moments (after ``maximize``), as in
    PyTorch ``Adam``; ``update`` then needs ``params``.
  * ``bias_correction=False``: :math:`\hat m_t = m_t, \hat v_t = v_t`
    (the paper's Section 3 ablation, Figure 4).
  * ``eps_hat=True``: the paper's efficient form (end of Section 2, Keras and
    TensorFlow): :math:`u_t = \hat m_t \sqrt{1-\beta_2^t} / (\sqrt{v_t +
    \bar\varepsilon} + \hat\varepsilon)`, so ``eps`` meets the *raw*
    :math:`\sqrt{v_t}`; it weighs :math:`1/\sqrt{1-\beta_2^t}` times more
    than the default early in training.

  Three options of the modern Adam family act on the step :math:`u_t`
  itself (each keeps optax's state; see the variants guide):

  * ``atan2=True`` (Adam-atan2, Everett et al., 2024): :math:`u_t = a\,
    \operatorname{atan2}(\hat m_t, b \sqrt{\hat v_t})` with :math:`a, b`
    the ``atan2_a``, ``atan2_b``: no :math:`\varepsilon` (``eps`` and
    ``eps_root`` are unused), invariant to the gradient's scale, and
    :math:`|u_t| \le a\pi/2`.
  * ``update_clipping=True`` (StableAdamW, Wortsman et al., 2023): each
    tensor's step is divided by :math:`\max(1, \mathrm{RMS}_t)`,
    :math:`\mathrm{RMS}_t = \sqrt{\operatorname{mean}(g_t^2 / \max(\hat
    v_t, \varepsilon^2))}`, which damps the steps of a tensor whose
    gradient jumped far beyond its second moment (loss spikes).
  * ``cautious=True`` (Liang et al., 2024): :math:`u_t \leftarrow u_t \odot
    \phi_t \cdot n / (\sum \phi_t + 1)` with :math:`\phi_t = [u_t g_t >
    0]` and :math:`n` the tensor's size: no step against the current
    gradient, the rest scaled up to keep the step's size.

  The last two read statistics of whole tensors, so they keep one array per
  leaf (``pack_small_leaves`` does not apply).

  Args:
    b1: decay rate :math:`\beta_1` of the first moment, in [0, 1).
    b2: decay rate :math:`\beta_2` of the second moment, in [0, 1).
    eps: :math:`\varepsilon` added to :math:`\sqrt{\hat v_t}` (outside the
      root, as in the paper and PyTorch), >= 0.
    eps_root: :math:`\bar\varepsilon` added inside the root, >= 0 (useful for
      meta-gradients through Adam).
    mu_dtype: storage dtype of :math:`m_t`; ``None`` keeps the parameter's.
      A narrower float than the math's is rounded stochastically (see
      ``moment_rounding``). ``"int8"``: block-wise dynamic 8-bit storage
      (Dettmers et al., 2022): blocks of 256 values with a float32 absmax
      scale each, decoded to float32 for the math and encoded again in the
      same step (a :class:`QuantizedMoment`; see :func:`adam_jax.code_map`).
      ``"int4"``: 4-bit storage (Li et al., 2023), two codes per byte, blocks
      of 128 values (an :class:`Int4Moment`).
    nesterov: use Nesterov momentum (NAdam, Dozat 2016).
    nu_dtype: storage dtype of :math:`v_t` (optax has no such option);
      ``None`` keeps the parameter's real dtype. E.g. ``jnp.bfloat16`` halves
      the second moment's memory; the math still runs in float32.
      ``"int8"``: block-wise 8-bit storage as for ``mu_dtype`` (unsigned
      code map; a positive :math:`v_t` never rounds to 0). ``"int4"``: 4
      bits normalized by row and column maxima, on a linear map without 0
      (Li et al., 2023). ``"factored"``: for tensors of two or more axes,
      the means of :math:`v_t` over the two largest axes (Adafactor's
      factorization, Shazeer & Stern, 2018; a :class:`FactoredMoment`); the
      step reads their rank-1 reconstruction. Not with ``amsgrad``.
    amsgrad: PyTorch/Keras AMSGrad (maximum of the raw second moment).
    maximize: ascend instead of descend.
    bias_correction: divide the moments by :math:`1 - \beta^t`.
    eps_hat: add ``eps`` to :math:`\sqrt{v_t}` before bias correction.
    weight_decay: coupled L2 coefficient :math:`\lambda` (>= 0) or a schedule
      of the step count; ``None`` (the default): none.
    mask: where ``weight_decay`` applies: a tree of bools like the parameters
      (or a prefix of it), or a function of the parameters returning one.
    skip_nonfinite: when any gradient element is NaN or infinite, return a
      zero update and leave the state unchanged except ``state.skipped``,
      which counts such steps (see :func:`adam`).
    pack_small_leaves: store the moments of many small leaves packed in flat
      chunks (a :class:`PackedMoments`), updated a chunk at a time: the same
      numbers, faster on trees of many leaves (see :func:`adam`).
    int8_min_size: with ``mu_dtype``/``nu_dtype`` ``"int8"``, ``"int4"``
      or ``"factored"``, leaves with fewer elements (and, factored, leaves of
      fewer than two axes) keep float32 moments.
    moment_rounding: how a moment is rounded into a storage dtype narrower
      than the math's (e.g. bfloat16 moments of bfloat16 parameters):
      ``"stochastic"`` (the default) rounds up or down with the
      probabilities that make the stored value unbiased, from a hash of the
      step count and the element's position (the same on every run and
      backend), so a bfloat16 :math:`v_t` decays at :math:`\beta_2 = 0.999`;
      ``"nearest"`` rounds to nearest, as optax does.
    cautious: mask the step where it disagrees in sign with the gradient.
    update_clipping: StableAdamW's per-tensor update clipping.
    atan2: Adam-atan2's bounded step instead of the division by
      :math:`\sqrt{\hat v_t} + \varepsilon`.
    atan2_a: the scale :math:`a > 0` of Adam-atan2's step (1.27, as
      adam-atan2-pytorch; :math:`4/\pi \approx 1.273` makes it match Adam's
      step at :math:`|\hat m_t| = \sqrt{\hat v_t}`).
    atan2_b: the scale :math:`b > 0` of :math:`\sqrt{\hat v_t}` inside
      Adam-atan2's ``atan2``.

  Returns:
    An :class:`optax.GradientTransformation` whose state is optax's own
    ``optax.ScaleByAdamState`` (``optax.ScaleByAmsgradState`` with
    ``amsgrad``), so ``update`` also steps a state that optax's ``init``
    made; with ``skip_nonfinite``, a :class:`ScaleByAdamSkipState` (or
    :class:`ScaleByAmsgradSkipState`), which adds the ``skipped`` count.

  Raises:
    ValueError: a concrete hyperparameter outside its range.
    TypeError: a hyperparameter of the wrong type, a non-float storage dtype,
      or integer parameters.

  Example:
    >>> import jax.numpy as jnp
    >>> import adam_jax
    >>> tx = adam_jax.scale_by_adam()
    >>> params = jnp.array([1.0, -2.0])
    >>> state = tx.init(params)
    >>> updates, state = tx.update(jnp.array([0.5, -0.1]), state)
    >>> print(updates.round(4))  # the first Adam step is sign(g), up to eps
    [ 1. -1.]
    >>> tx = adam_jax.scale_by_adam(eps=0.1, eps_hat=True)
    >>> updates, _ = tx.update(jnp.array([0.5, -0.1]), tx.init(params))
    >>> # eps_hat, t = 1: sqrt(0.001) g / (sqrt(0.001) |g| + 0.1)
    >>> print(updates.round(4))
    [ 0.1365 -0.0307]

  References:
    Kingma & Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, ICLR 2015.

    Dozat, `Incorporating Nesterov Momentum into Adam
    <https://openreview.net/pdf?id=OM0jvwB8jIp57ZJjtNEZ>`_, 2016.

    Reddi, Kale & Kumar, `On the Convergence of Adam and Beyond
    <https://openreview.net/forum?id=ryQu7f-RZ>`_, ICLR 2018.

    Everett et al., `Scaling Exponents Across Parameterizations and Optimizers
    <https://arxiv.org/abs/2407.05872>`_, ICML 2024 (Adam-atan2).

    Wortsman et al., `Stable and low-precision training for large-scale
    vision-language models <https://arxiv.org/abs/2304.13013>`_, NeurIPS 2023
    (StableAdamW).

    Liang et al., `Cautious Optimizers: Improving Training with One Line of
    Code <https://arxiv.org/abs/2411.16085>`_, 2024.

    Li, Chen & Zhu, `Memory Efficient Optimizers with 4-bit States
    <https://arxiv.org/abs/2309.01507>`_, NeurIPS 2023.

    Shazeer & Stern, `Adafactor: Adaptive Learning Rates with Sublinear
    Memory Cost <https://arxiv.org/abs/1804.04235>`_, ICML 2018.
  """
  return adam_family(
    adam_config(
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
    )
  )


def adam_config(
  b1,
  b2,
  eps,
  eps_root,
  mu_dtype,
  *,
  nesterov=False,
  nu_dtype=None,
  amsgrad=False,
  maximize=False,
  bias_correction=True,
  eps_hat=False,
  weight_decay=None,
  mask=None,
  skip_nonfinite=False,
  pack_small_leaves=True,
  int8_min_size=storage.INT8_MIN_SIZE,
  moment_rounding="stochastic",
  **variants: Any,
) -> Config:
  """The checked :class:`Config` of :func:`scale_by_adam`'s arguments, plus
  the variant fields of ``Config`` that aliases set (``variants``)."""
  validation.check_bool("amsgrad", amsgrad)  # before it becomes a mode string
  validation.check_bool("bias_correction", bias_correction)  # under its own name
  return checked_config(
    b1,
    b2,
    eps,
    eps_root,
    mu_dtype,
    nu_dtype,
    nesterov,
    amsgrad="raw" if amsgrad else None,
    maximize=maximize,
    bias_correction_mu=bias_correction,
    bias_correction_nu=bias_correction,
    eps_hat=eps_hat,
    weight_decay=weight_decay,
    weight_decay_mask=mask,
    skip_nonfinite=skip_nonfinite,
    pack_small_leaves=pack_small_leaves,
    int8_min_size=int8_min_size,
    moment_rounding=moment_rounding,
    **variants,
  )
