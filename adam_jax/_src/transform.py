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
    p_leaves, wd_leaves = _coupled_decay(cfg, state, params, treedef, len(g_leaves))
    clock = rule.Clock(cfg, optax.safe_increment(state.count))
    finite = all_finite(g_leaves) if cfg.skip_nonfinite else None
    leaf_step = functools.partial(_stored_step, clock, finite)
    moments = [state.mu, state.nu, getattr(state, "nu_max", None)]
    if packing.is_packed(state.mu):
      one = clock.one(jnp.float32)
      u_leaves, (m, v, vm) = packing.packed_step(
        state.mu.layout, leaf_step, g_leaves, moments, p_leaves, wd_leaves, one
      )
      u = treedef.unflatten(u_leaves)
    else:
      args = (leaf_step, treedef, g_leaves, moments, p_leaves, wd_leaves)
      u, m, v, vm = _per_leaf(*args)
    count, skipped = clock.t, None
    if finite is not None:
      count = jnp.where(finite, clock.t, state.count)
      skipped = jnp.where(finite, state.skipped, optax.safe_increment(state.skipped))
    new_state = _state(cfg, count, m, v, vm, skipped)
    return u, new_state

  return optax.GradientTransformation(init_fn, update_fn)


def _state(cfg: Config, count, mu, nu, nu_max, skipped) -> Any:
  """The state of ``cfg`` (optax's class unless ``skip_nonfinite``)."""
  flags = (bool(cfg.amsgrad), cfg.skip_nonfinite)
  return states.make_state(*flags, count, mu, nu, nu_max, skipped)


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
    return key

  def align(group):  # packed 8-bit moments align their leaves to whole blocks
    return storage.int8.BLOCK if storage.INT8 in group else 1

  layout, placements = None, list[Any]()
  if cfg.pack_small_leaves:
    unboxed = validation.unboxed(params)
    leaves, treedef = jax.tree.flatten(unboxed, is_leaf=validation.is_none)
    layout, placements = packing.plan(leaves, treedef, group, align_of=align)

  def moment(dtype_for, signed):
    if layout is None or not layout.chunk_sizes:  # optax's: an array per leaf
      return _zeros_per_leaf(params, dtype_for, signed)
    return packing.zeros(layout, placements, leaves, dtype_for, signed)

  return _state(
    cfg,
    count=placement.counter(params),
    mu=moment(mu_dtype, signed=True),
    nu=moment(nu_dtype, signed=False),
    nu_max=moment(nu_dtype, signed=False) if cfg.amsgrad else None,
    skipped=placement.counter(params) if cfg.skip_nonfinite else None,
  )


def _zeros_per_leaf(params: Any, dtype_for, signed: bool) -> Any:
  """A zero moment per leaf of ``params``, in optax's layout. A leaf boxed by
  a framework (Flax NNX's ``Variable``) keeps its box when its moment is one
  array, as optax's moments do; an 8-bit moment (two arrays) takes the box's
  place, since such a box holds one array."""

  def zeros(x):
    if validation.is_box(x):
      p = jax.tree.leaves(x)[0]
      if dtype_for(p) == storage.INT8:
        return storage.zeros(p, storage.INT8, signed)
    return jax.tree.map(lambda p: storage.zeros(p, dtype_for(p), signed), x)

  return jax.tree.map(zeros, params, is_leaf=_none_or_box)


def _none_or_box(x: Any) -> bool:
  return x is None or validation.is_box(x)


def _stored_step(clock: rule.Clock, finite, g, stored, p, wd):
  """:func:`rule.leaf_step` on stored moments ``(m, v, v_max)``: decoded
  before the rule and encoded after it. With ``finite`` (``skip_nonfinite``)
  a step with a non-finite gradient returns a zero update and the stored
  moments unchanged."""
  decoded = [None if x is None else storage.decoded(x) for x in stored]

  def settle(m_new, v_new):
    one = clock.one(m_new.dtype)
    return tuple(
      storage.settled(x, s, one)
      for x, s in zip((m_new, v_new), stored[:2], strict=True)
    )

  m, v, v_max = decoded
  u, *new = rule.leaf_step(clock, g, m, v, v_max, p, wd, settle=settle)
  out = (u, *storage.encoded(new, list(stored)))
  if finite is None:
    return out
  old = (jnp.zeros_like(g), *stored)
  return tuple(
    None if x is None else jax.tree.map(lambda a, b: jnp.where(finite, a, b), x, y)
    for x, y in zip(out, old, strict=True)
  )


def _per_leaf(leaf_step, treedef, g_leaves, moments, p_leaves, wd_leaves):
  """``leaf_step`` on each leaf of an unpacked state: ``(u, m, v, v_max)``,
  ``u`` in the gradients' structure (``treedef``) and each moment in its own
  (``v_max`` None without AMSGrad). The moments' structure may differ from
  the gradients' by single-array boxes (``validation.is_box``), which keep
  the leaves' order."""
  flat, defs = [], []
  for tree in moments:
    leaves, tdef = jax.tree.flatten(tree, is_leaf=_none_or_stored)
    flat.append([None] * len(g_leaves) if tree is None else leaves)
    defs.append(None if tree is None else tdef)
  outs = [
    (None, None, None, None) if g is None else leaf_step(g, ms, p, wd)
    for g, *ms, p, wd in zip(g_leaves, *flat, p_leaves, wd_leaves, strict=True)
  ]
  columns = list(zip(*outs, strict=True)) if outs else [()] * 4
  u = treedef.unflatten(list(columns[0]))
  return u, *(
    None if tdef is None else tdef.unflatten(list(col))
    for tdef, col in zip(defs, columns[1:], strict=True)
  )


def _none_or_stored(x: Any) -> bool:
  return x is None or storage.is_quantized(x)


def check_state(cfg: Config, updates: Any, state: Any) -> None:
  """Checks, at trace time, that ``state`` is the state ``init`` of this
  configuration makes (or optax's ``init`` of its namesake: the same class)
  for parameters like ``updates``, in any of the layouts ``init`` gives
  (per leaf or packed, boxed or not)."""
  expected = states.state_class(bool(cfg.amsgrad), cfg.skip_nonfinite)
  if not isinstance(state, expected):
    raise TypeError(
      f"state must be the {_class_name(expected)} that init returns for"
      f" these options, got {_described_state(state)}. Was the state made by"
      " another optimizer, or with other amsgrad/skip_nonfinite options? Call"
      " init with this optimizer."
    )
  validation.check_tree_matches(
    "updates", updates, "state.mu", packing.logical(state.mu)
  )
  for field, dtype in (("mu", cfg.mu_dtype), ("nu", cfg.nu_dtype)):
    if dtype is None:
      continue
    # 8-bit storage keeps small leaves in float32.
    if dtype == storage.INT8:
      allowed, shown = {storage.INT8, "float32"}, repr(dtype)
    else:
      allowed = {shown := jnp.dtype(dtype).name}
    tree = getattr(state, field)
    for path, x in validation.leaf_paths(tree, is_leaf=storage.is_quantized):
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
  if isinstance(state, states.ADAM_STATES):
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
    "weight_decay (coupled L2)",
    "weight_decay=None",
    "state.mu",
    packing.logical(state.mu),
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

  Args:
    b1: decay rate :math:`\beta_1` of the first moment, in [0, 1).
    b2: decay rate :math:`\beta_2` of the second moment, in [0, 1).
    eps: :math:`\varepsilon` added to :math:`\sqrt{\hat v_t}` (outside the
      root, as in the paper and PyTorch), >= 0.
    eps_root: :math:`\bar\varepsilon` added inside the root, >= 0 (useful for
      meta-gradients through Adam).
    mu_dtype: storage dtype of :math:`m_t`; ``None`` keeps the parameter's.
      ``"int8"``: block-wise dynamic 8-bit storage (Dettmers et al., 2022):
      blocks of 256 values with a float32 absmax scale each, decoded to
      float32 for the math and encoded again in the same step (a
      :class:`QuantizedMoment`; see :func:`adam_jax.code_map`).
    nesterov: use Nesterov momentum (NAdam, Dozat 2016).
    nu_dtype: storage dtype of :math:`v_t` (optax has no such option);
      ``None`` keeps the parameter's real dtype. E.g. ``jnp.bfloat16`` halves
      the second moment's memory; the math still runs in float32.
      ``"int8"``: block-wise 8-bit storage as for ``mu_dtype`` (unsigned
      code map; a positive :math:`v_t` never rounds to 0).
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
    int8_min_size: with ``mu_dtype``/``nu_dtype`` ``"int8"``, leaves with
      fewer elements keep float32 moments.

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
  """
  validation.check_bool("amsgrad", amsgrad)  # before it becomes a mode string
  validation.check_bool("bias_correction", bias_correction)  # under its own name
  cfg = checked_config(
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
  )
  return adam_family(cfg)
