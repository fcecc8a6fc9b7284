"""``scale_by_adam`` and its state: the one Adam rule, every variant an option.

The math for one leaf lives in ``_leaf_step``; ``adam_family`` builds the
``GradientTransformation`` around it. The public ``scale_by_adam`` and the
aliases (``amsgrad``, ``adamax``) are configurations of that one builder.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from adam_jax._src import fused
from adam_jax._src import moments
from adam_jax._src import native
from adam_jax._src import validation


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


@dataclasses.dataclass(frozen=True)
class _Config:
  """Static and numeric configuration of the Adam family (internal)."""

  b1: Any
  b2: Any
  eps: Any
  eps_root: Any
  mu_dtype: Any
  nu_dtype: Any
  nesterov: bool = False
  # None: plain Adam; "corrected": optax's AMSGrad, the running max of the
  # (optionally) bias-corrected second moment; "raw": PyTorch's and Keras's,
  # the running max of the raw second moment, bias-corrected afterwards.
  amsgrad: str | None = None
  bias_correction_mu: bool = True
  bias_correction_nu: bool = True
  # Negate the gradient on entry (PyTorch's ``maximize``).
  maximize: bool = False
  # Add eps to sqrt(v_t) before bias correction (the paper's epsilon-hat, Keras).
  eps_hat: bool = False
  # Coupled L2 weight decay: g <- g + weight_decay * params before the moments
  # (PyTorch ``Adam(weight_decay=...)``). None or a Python 0: none at all (so
  # ``update`` needs no params; under ``inject_hyperparams`` a default of 0.0
  # would become an array and demand them).
  weight_decay: Any = None
  weight_decay_mask: Any = None
  # "l2": v_t is the EMA of g^2 (Adam); "max": u_t = max(b2 u, |g| + eps)
  # (AdaMax, Kingma & Ba 2015, Section 7.1).
  norm: str = "l2"
  # Skip the whole step (zero update, state unchanged but for ``skipped``) when
  # any gradient element is NaN or infinite.
  skip_nonfinite: bool = False
  # Store the moments of many small leaves packed into flat chunks (fused.py).
  pack_small_leaves: bool = True
  # With mu_dtype/nu_dtype "int8": leaves with fewer elements keep float32.
  int8_min_size: int = moments.INT8_MIN_SIZE


def _leaf_step(cfg: _Config, t, t_next, g, m, v, v_max, p=None, wd=None, **step):
  """One Adam step for one leaf: ``(g, m, v, v_max) -> (u, m, v, v_max)``.

  Everything is computed in ``compute_dtype(g.dtype)`` (>= float32); the update
  comes back in ``g.dtype`` and the moments in their stored dtypes. ``wd`` is
  the coupled weight decay for this leaf (None: none) and ``p`` its parameter.
  ``step`` holds what is shared by every leaf: ``bound(rdt)``, the step-size
  bound in a dtype.

  For finite real gradients the update is finite and ``|u| <= bound`` (up to
  ``BOUND_SLACK`` of rounding) at any magnitude: a ``v_t`` that overflowed
  is read back as its dtype's largest value (so it decays again), a narrower
  storage dtype saturates, and the ratio ``m_hat / denominator`` (which can
  only leave the bound through overflow or underflow, e.g. ``v_t`` flushed to
  0 with ``eps = 0``) is clipped to it. Inside the representable range nothing changes, bit for bit.
  (``m_t`` itself is not clamped in the compute dtype: it can overflow only
  within an ulp of the largest float, and an extra clamp there changes how
  XLA fuses, hence rounds, the common case.) A NaN or infinite gradient
  element gives a NaN update there (as in optax: it makes ``v_t`` NaN, so the
  clip keeps it NaN), never a plausible-looking finite one. Complex parameters
  keep the plain formula.
  """
  cdt = moments.compute_dtype(g.dtype)
  rdt = moments.real_dtype(cdt)
  real = cdt == rdt
  gc = g.astype(cdt)
  if cfg.maximize:
    gc = -gc
  if wd is not None:
    gc = gc + moments.cast_hyperparameter(wd, rdt) * jnp.asarray(p).astype(cdt)
  b1 = moments.cast_hyperparameter(cfg.b1, rdt)
  b2 = moments.cast_hyperparameter(cfg.b2, rdt)
  eps = moments.cast_hyperparameter(cfg.eps, rdt)
  eps_root = moments.cast_hyperparameter(cfg.eps_root, rdt)
  tc, tc_next = t.astype(rdt), t_next.astype(rdt)

  keep1, rate1, bc1 = moments.ema_coefficients(b1, tc)
  keep1c, rate1c = _as_compute(keep1, cdt), _as_compute(rate1, cdt)
  m_new = rate1c * gc + keep1c * m.astype(cdt)

  if cfg.norm == "max":
    v_new = jnp.maximum(jnp.abs(gc) + eps, b2 * v.astype(rdt))
  else:
    keep2, rate2, bc2 = moments.ema_coefficients(b2, tc)
    # v_t may overflow to inf for one step (g^2 beyond the dtype); reading it
    # back saturated lets it decay again instead of freezing the parameter.
    v_new = rate2 * moments.abs_sq(gc) + keep2 * moments.read_back(v, rdt)
    if real:
      # An infinite gradient makes v_t NaN (not inf, which a huge finite one
      # also gives), so that the clipped ratio below stays NaN for it: the
      # update of a non-finite gradient is NaN, never a plausible finite step.
      # (gc - gc is exactly +0 for finite gc, and v_new + 0 = v_new for
      # v_new >= 0; computed where g is read anyway.)
      v_new = v_new + (gc - gc)

  if cfg.nesterov:
    keep1n, _, bc1n = moments.ema_coefficients(b1, tc_next)
    keep1nc = _as_compute(keep1n, cdt)
    if cfg.bias_correction_mu:
      ahead = keep1nc * (m_new / _as_compute(bc1n, cdt))
      now = rate1c * (gc / _as_compute(bc1, cdt))
    else:
      ahead, now = keep1nc * m_new, rate1c * gc
    # Each term may overflow, with opposite signs (inf - inf = NaN).
    m_hat = moments.saturate(ahead) + moments.saturate(now) if real else ahead + now
  elif cfg.bias_correction_mu:
    m_hat = m_new / _as_compute(bc1, cdt)
  else:
    m_hat = m_new

  v_max_new = None
  if cfg.norm == "max":
    denom = v_new  # the infinity norm needs no bias correction
  else:
    v_used = v_new
    if cfg.amsgrad == "raw":
      v_max_new = v_used = jnp.maximum(moments.read_back(v_max, rdt), v_new)
    if cfg.eps_hat:
      # m_hat / ((sqrt(v) + eps) / sqrt(1 - b2^t)): eps meets the raw moment.
      denom = jnp.sqrt(v_used + eps_root) + eps
      if cfg.bias_correction_nu:
        denom = denom / jnp.sqrt(bc2)
    else:
      v_hat = v_used / bc2 if cfg.bias_correction_nu else v_used
      # sqrt(inf) would turn m_hat / inf into 0 (v_hat >= 0: one side).
      v_hat = jnp.minimum(v_hat, float(jnp.finfo(rdt).max))
      if cfg.amsgrad == "corrected":
        v_max_new = v_hat = jnp.maximum(v_max.astype(rdt), v_hat)
      denom = jnp.sqrt(v_hat + eps_root) + eps
  if _positive(cfg.eps) or (cfg.norm == "l2" and _positive(cfg.eps_root)):
    u = m_hat / denom.astype(cdt)  # denom >= eps > 0: never 0 / 0
  else:
    u = moments.safe_divide(m_hat, denom.astype(cdt))
  if real:
    # The clip allows BOUND_SLACK of rounding above the bound: at t = 1 every
    # element sits exactly on it (|m_hat| = sqrt(v_hat)), and the rounding
    # there must stay optax's, bit for bit.
    bound = step["bound"](rdt) * (1 + BOUND_SLACK)
    u = jnp.clip(u, -bound, bound)  # NaN stays NaN
  return (
    u.astype(g.dtype),
    moments.store(m_new, m.dtype),
    moments.store(v_new, v.dtype),
    None if v_max_new is None else moments.store(v_max_new, v_max.dtype),
  )


def _stored_step(cfg: _Config, t, t_next, g, stored, p, wd, bound, finite):
  """:func:`_leaf_step` on stored moments: 8-bit moments are decoded to
  float32 before the math and encoded after it (their blocks' scales in one
  reduction); with ``finite`` (``skip_nonfinite``) a step with a non-finite
  gradient returns a zero update and the stored moments unchanged.

  (``update_fn`` sends the leaves that ``_native_ok`` accepts to ``native``'s
  one-pass CPU kernel instead, with this as their step on other platforms
  and for derivatives.)"""

  def xla_step(g, stored):
    m, v, v_max = (moments.decoded(x) for x in stored)
    u, *new = _leaf_step(cfg, t, t_next, g, m, v, v_max, p, wd, bound=bound)
    coded = [i for i, x in enumerate(stored) if moments.is_quantized(x)]
    if coded:
      encoded = moments.quantize(
        [new[i] for i in coded], [stored[i].signed for i in coded]
      )
      for i, q in zip(coded, encoded, strict=True):
        new[i] = q
    return (u, *new)

  out = xla_step(g, stored)
  if finite is None:
    return out
  old = (jnp.zeros_like(g), *stored)
  return tuple(
    None if x is None else jax.tree.map(lambda a, b: jnp.where(finite, a, b), x, y)
    for x, y in zip(out, old, strict=True)
  )


def _native_ok(
  cfg: _Config, gs: list[Any], stored: tuple[Any, Any, Any], packed: bool
) -> bool:
  """Whether ``native``'s one-pass CPU kernel steps these gradients (one
  leaf, or the members of a ``packed`` chunk): plain Adam moments (any decay
  rates, eps_root and bias corrections; eps other than a Python 0) of real
  float32 gradients, stored in bfloat16, 8 bits or float32, in a one-device
  CPU process (the kernel does not partition over devices). A leaf of its
  own needs a moment stored narrower than float32: with two float32 moments
  XLA fuses the step into ``apply_updates`` and moves fewer bytes. Coupled
  weight decay and ``skip_nonfinite`` stay in XLA."""
  m, v, v_max = stored
  plain = cfg.norm == "l2" and not (
    cfg.nesterov or cfg.amsgrad or cfg.eps_hat or cfg.maximize or cfg.skip_nonfinite
  )
  # With a Python eps of 0, XLA divides by the square root through rsqrt.
  eps_zero = isinstance(cfg.eps, (int, float)) and cfg.eps == 0
  kinds = [
    moments.INT8 if moments.is_quantized(x) else jnp.result_type(x).name for x in (m, v)
  ]
  return (
    plain
    and not eps_zero
    and v_max is None
    and all(jnp.result_type(g) == jnp.float32 for g in gs)
    and set(kinds) <= {"float32", "bfloat16", moments.INT8}
    and (packed or kinds != ["float32", "float32"])
    and jax.device_count() == 1
    and jax.default_backend() == "cpu"
    and native.enabled()
  )


def _native_coefficients(cfg: _Config, t: jax.Array, bound: Any) -> jax.Array:
  """The scalars of ``_leaf_step``'s math for the kernel (``cpu_step.cc``'s
  ``Coef``), computed as XLA computes them there: float32, a division by a
  bias correction as a multiplication by its reciprocal."""
  f32 = jnp.dtype(jnp.float32)  # the key ``bound`` caches _leaf_step's under
  tc = t.astype(f32)
  b1 = moments.cast_hyperparameter(cfg.b1, f32)
  b2 = moments.cast_hyperparameter(cfg.b2, f32)
  keep1, rate1, bc1 = moments.ema_coefficients(b1, tc)
  keep2, rate2, bc2 = moments.ema_coefficients(b2, tc)
  one = jnp.ones([], f32)
  inv_bc1 = one / bc1 if cfg.bias_correction_mu else one
  inv_bc2 = one / bc2 if cfg.bias_correction_nu else one
  safe = not (_positive(cfg.eps) or _positive(cfg.eps_root))
  scalars = (
    rate1, keep1, inv_bc1, rate2, keep2, inv_bc2, cfg.eps, cfg.eps_root,
    bound(f32) * (1 + BOUND_SLACK), float(safe),
  )  # fmt: skip
  return jnp.stack([jnp.asarray(x).astype(f32) for x in scalars])


def _native_step(cfg: _Config, t, bound, cache, kind, xla_fn, gs, states, layout):
  """``xla_fn(gs, states) -> (updates, *states)``, run on the CPU by
  ``native``'s kernel (``native.step``) in one call: ``gs`` are gradient
  leaves, ``states`` their ``(m, v, None)`` stored moments (a leaf's own, or
  a packed chunk's), and ``layout`` places each leaf in its state
  (``native.call``).

  ``cache`` is one update's (a dict): its calls share the kernel's
  coefficients, and the traced XLA step of calls alike (the same ``kind`` of
  ``xla_fn``, layout and shapes: the 2000x1024 benchmark's 63 chunks trace
  it twice, not 63 times)."""

  def parts(x):  # a moment as native.call's (values or codes, scales)
    if moments.is_quantized(x):
      return x.codes, x.scales
    return x, jnp.zeros((0,), jnp.float32)

  def rebuilt(x, values, scales):
    return (
      moments.QuantizedMoment(values, scales) if moments.is_quantized(x) else values
    )

  def kernel(gs, states, coef, free):
    flat = [(*parts(m), *parts(v)) for m, v, _ in states]
    outs = native.call(gs, flat, coef, layout, free)
    new = [
      (
        rebuilt(m, *outs[4 * k : 4 * k + 2]),
        rebuilt(v, *outs[4 * k + 2 : 4 * k + 4]),
        None,
      )
      for k, (m, v, _) in enumerate(states)
    ]
    return list(outs[4 * len(states) :]), *new

  if "coef" not in cache:
    cache["coef"] = _native_coefficients(cfg, t, bound)
  key = (kind, tuple(layout))
  return native.step(xla_fn, kernel, gs, states, cache["coef"], cache, key)


# Leaves with moments of their own share a kernel call up to this many
# elements in all (a leaf larger than it has a call of its own). Measured with
# bfloat16 moments against float32 ones, update step / training step, glibc
# keeping freed memory (README): 16M parameters in 64 leaves 1.36 with a call
# per leaf, 0.97 with one call, 1.10 with these groups; the transformer tree
# 1.12 / 1.12 a call per leaf, 0.97 / 1.05 with these groups, 0.98 / 1.14
# with one call. One call for all leaves waits for every gradient and keeps
# every update alive at once, which costs the training step (transformer,
# default glibc: 1.46 with one call, 1.25-1.27 with groups or a call per
# leaf).
NATIVE_GROUP_ELEMENTS = 2**22


def _native_groups(sizes: list[int]) -> list[list[int]]:
  """Consecutive runs of the leaves (by index) of at most
  ``NATIVE_GROUP_ELEMENTS`` elements together, or of one leaf."""
  groups: list[list[int]] = []
  total = 0
  for i, size in enumerate(sizes):
    if not groups or total + size > NATIVE_GROUP_ELEMENTS:
      groups.append([])
      total = 0
    groups[-1].append(i)
    total += size
  return groups


def _leaf_layout(state: int, g: Any) -> tuple[int, int, int, int]:
  """A leaf with moments of its own in ``native.call``'s layout: its blocks
  along its trailing axes (``moments._block_axis``)."""
  a = moments._block_axis(tuple(g.shape))
  return (state, 0, math.prod(g.shape[:a]), math.prod(g.shape[a:]))


# Relative allowance above the step bound for float32 rounding (of the step
# and of the bound itself) before the clip acts.
BOUND_SLACK = 2.0**-12


def _step_bound(cfg: _Config, t: jax.Array, dtype: Any) -> jax.Array:
  r"""The largest possible :math:`|\hat m_t| / \sqrt{\hat v_t}` at step ``t``.

  Both moments are weighted sums of the gradients, :math:`\hat m_t = \sum_k
  w_k g_{t-k}` and :math:`\hat v_t = \sum_k c_k g_{t-k}^2` (:math:`k < t`),
  so by Cauchy--Schwarz :math:`|\hat m_t| \le \sqrt{\sum_k w_k^2 / c_k}
  \sqrt{\hat v_t}`, with equality for :math:`g_{t-k} \propto w_k / c_k`.
  ``eps``, ``eps_root`` and AMSGrad's maximum only enlarge the denominator.
  With :math:`r = \beta_1^2 / \beta_2` and :math:`G = \sum_{k<t} r^k`:

  * Adam: :math:`w_k = (1-\beta_1)\beta_1^k / (1-\beta_1^t)`, :math:`c_k =
    (1-\beta_2)\beta_2^k / (1-\beta_2^t)`, so :math:`B_t^2 = (1-\beta_1)^2
    (1-\beta_2^t) G / ((1-\beta_2)(1-\beta_1^t)^2)`;
  * Nesterov: :math:`w_k = a \beta_1^k + d\,[k=0]` with :math:`a =
    \beta_1(1-\beta_1)/(1-\beta_1^{t+1})`, :math:`d = (1-\beta_1)/(1 -
    \beta_1^t)`, so :math:`B_t^2 = (1-\beta_2^t)(a^2 G + 2ad + d^2) /
    (1-\beta_2)`;
  * AdaMax: :math:`u_t \ge \beta_2^k |g_{t-k}|`, so :math:`B_t = \sum_k
    w_k \beta_2^{-k}`.

  Without bias correction the corresponding :math:`1 - \beta^t` factors are
  1. The bound is infinite for :math:`\beta_2 = 0 < \beta_1` (and for a
  decay rate that arrived rounded to exactly 1) and is returned saturated at
  the dtype's largest value.
  """
  b1 = jnp.asarray(cfg.b1).astype(dtype)
  b2 = jnp.asarray(cfg.b2).astype(dtype)
  one = jnp.ones([], dtype)
  bc1 = one - b1**t if cfg.bias_correction_mu else one
  if cfg.norm == "max":
    bound = (one - b1) / bc1 * _geometric_sum(b1, b2, t)
  else:
    bc2 = one - b2**t if cfg.bias_correction_nu else one
    g = _geometric_sum(b1 * b1, b2, t)
    if cfg.nesterov:
      bc1n = one - b1 ** (t + one) if cfg.bias_correction_mu else one
      a = b1 * (one - b1) / bc1n
      d = (one - b1) / bc1
      square = bc2 / (one - b2) * (a * a * g + 2 * a * d + d * d)
    else:
      square = (one - b1) ** 2 * bc2 / ((one - b2) * bc1 * bc1) * g
    bound = jnp.sqrt(square)
  bound = jnp.where((b1 == one) | (b2 == one), jnp.inf, bound)
  return jnp.minimum(bound, jnp.finfo(dtype).max)


def _geometric_sum(x: jax.Array, y: jax.Array, t: jax.Array) -> jax.Array:
  """``sum_{k<t} (x / y)**k`` for ``0 <= x, y < 1``, accurate near ``x = y``."""
  delta = (x - y) / y  # the ratio minus 1, without first rounding the ratio
  safe = jnp.where((y == 0) | (delta == 0), jnp.ones_like(delta), delta)
  power_sum = jnp.expm1(t * jnp.log1p(safe)) / safe
  at_zero = jnp.where(x == 0, jnp.ones_like(x), jnp.inf)  # 0**0 = 1
  return jnp.where(y == 0, at_zero, jnp.where(delta == 0, t, power_sum))


def _alignment(group: Any) -> int:
  """Packed 8-bit moments align their leaves to whole blocks."""
  return moments.BLOCK if moments.INT8 in group else 1


def _positive(x: Any) -> bool:
  """A Python number that stays > 0 in any compute dtype (at least the
  smallest normal float32: subnormals may be flushed to zero). Arrays and
  traced values may be 0."""
  if not isinstance(x, (int, float)) or isinstance(x, bool):
    return False
  return x >= float(jnp.finfo(jnp.float32).tiny)


def _as_compute(x, dtype):
  """Casts an array coefficient to the (maybe complex) compute dtype."""
  return x if isinstance(x, (int, float)) else x.astype(dtype)


def adam_family(cfg: _Config) -> optax.GradientTransformation:
  """Builds the transformation for one configuration of the Adam family."""

  def int8_or_float32(p):
    """8-bit storage for leaves of at least ``int8_min_size`` elements."""
    if isinstance(cfg.int8_min_size, jax.core.Tracer):
      raise TypeError(
        "int8_min_size decides the state's shapes, so it cannot be traced:"
        " with optax.inject_hyperparams pass"
        " static_args=('int8_min_size',), or call init outside jit."
      )
    if math.prod(jnp.shape(p)) >= cfg.int8_min_size:
      return moments.INT8
    return jnp.dtype(jnp.float32)

  def mu_dtype_for(p):
    if cfg.mu_dtype is None:
      return jnp.result_type(p)
    if cfg.mu_dtype == moments.INT8:
      if jnp.iscomplexobj(p):
        raise TypeError(
          f"mu_dtype='int8' cannot store the first moment of a"
          f" {jnp.result_type(p)} parameter: use a complex dtype (or None)."
        )
      return int8_or_float32(p)
    if jnp.iscomplexobj(p) != jnp.issubdtype(cfg.mu_dtype, jnp.complexfloating):
      raise TypeError(
        f"mu_dtype={jnp.dtype(cfg.mu_dtype).name} cannot store the first"
        f" moment of a {jnp.result_type(p)} parameter: use a"
        f" {'complex' if jnp.iscomplexobj(p) else 'real'} dtype."
      )
    return cfg.mu_dtype

  def nu_dtype_for(p):
    if cfg.nu_dtype is None:
      return moments.real_dtype(jnp.result_type(p))
    if cfg.nu_dtype == moments.INT8:
      return int8_or_float32(p)
    return cfg.nu_dtype

  def storage_group(p):
    return mu_dtype_for(p), nu_dtype_for(p), jnp.result_type(p)

  def init_fn(params):
    validation.check_param_dtypes("params", params)
    layout, placements = None, []
    if cfg.pack_small_leaves:
      leaves, treedef = jax.tree.flatten(params, is_leaf=validation.is_none)
      layout, placements = fused.plan(
        leaves, treedef, storage_group, align_of=_alignment
      )

    def moment(dtype_for, signed):
      if layout is None or not layout.chunk_sizes:  # optax's: an array per leaf
        return jax.tree.map(lambda p: moments.zeros(p, dtype_for(p), signed), params)
      return fused.zeros(layout, placements, leaves, dtype_for, signed)

    return ScaleByAdamState(
      count=moments.counter(params),
      mu=moment(mu_dtype_for, signed=True),
      nu=moment(nu_dtype_for, signed=False),
      nu_max=moment(nu_dtype_for, signed=False) if cfg.amsgrad else None,
      skipped=moments.counter(params) if cfg.skip_nonfinite else None,
    )

  def update_fn(updates, state, params=None):
    validation.check_param_dtypes("updates", updates)
    check_state(cfg, updates, state)
    count_inc = optax.safe_increment(state.count)
    count_next = optax.safe_increment(count_inc)

    g_leaves, treedef = jax.tree.flatten(updates, is_leaf=validation.is_none)
    g_leaves = [None if g is None else jnp.asarray(g) for g in g_leaves]
    none = [None] * len(g_leaves)
    p_leaves, wd_leaves = none, none
    if _has_weight_decay(cfg):
      p_leaves, wd_leaves = _coupled_decay(cfg, state.count, params, state.mu, treedef)

    bounds: dict[Any, jax.Array] = {}  # one scalar per compute dtype

    def bound(rdt):
      if rdt not in bounds:
        bounds[rdt] = _step_bound(cfg, count_inc.astype(rdt), rdt)
      return bounds[rdt]

    finite = all_finite(g_leaves) if cfg.skip_nonfinite else None

    def leaf_step(g, ms, p, wd):
      return _stored_step(cfg, count_inc, count_next, g, ms, p, wd, bound, finite)

    native_step = functools.partial(_native_step, cfg, count_inc, bound, {})

    def chunk_step(xla_chunk, gs, offsets, ms):
      # A packed chunk's members, stepped by the CPU kernel in place of the
      # concatenation, the chunk's step and the slices (one pass, no copies).
      if not _native_ok(cfg, gs, ms, packed=True):
        return xla_chunk(gs, ms)

      def xla(gs, states):
        us, *new = xla_chunk(gs, list(states[0]))
        return us, tuple(new)

      layout = [(0, o, 1, g.size) for o, g in zip(offsets, gs, strict=True)]
      us, new = native_step("chunk", xla, gs, [tuple(ms)], layout)
      return us, *new

    def own_step(items):
      # leaf_step over leaves with moments of their own, ``(g, moments, p,
      # wd)`` each: those the CPU kernel takes in one call for all of them.
      outs = [None] * len(items)
      picked = []
      for k, (g, ms, p, wd) in enumerate(items):
        if wd is None and _native_ok(cfg, [g], ms, packed=False):
          picked.append(k)
        else:
          outs[k] = leaf_step(g, ms, p, wd)
      for group in _native_groups([items[k][0].size for k in picked]):
        ks = [picked[j] for j in group]
        gs = [items[k][0] for k in ks]
        states = [tuple(items[k][1]) for k in ks]

        def xla(gs, states):
          steps = [
            leaf_step(g, ms, None, None) for g, ms in zip(gs, states, strict=True)
          ]
          return [u for u, *_ in steps], *(tuple(new) for _, *new in steps)

        layout = [_leaf_layout(j, g) for j, g in enumerate(gs)]
        us, *new = native_step("own", xla, gs, states, layout)
        for k, u, n in zip(ks, us, new, strict=True):
          outs[k] = (u, *n)
      return outs

    if fused.is_packed(state.mu):
      u_leaves, (m, v, vm) = fused.packed_step(
        state.mu.layout,
        leaf_step,
        g_leaves,
        [state.mu, state.nu, state.nu_max],
        p_leaves,
        wd_leaves,
        one=count_inc.astype(jnp.float32) / count_inc.astype(jnp.float32),
        chunk_step=chunk_step,
        own_step=own_step,
      )
      u = treedef.unflatten(u_leaves)
    else:
      m_leaves = treedef.flatten_up_to(state.mu)
      v_leaves = treedef.flatten_up_to(state.nu)
      vm_leaves = treedef.flatten_up_to(state.nu_max) if cfg.amsgrad else none
      stepped = iter(
        own_step(
          [
            (g, (m, v, vm), p, wd)
            for g, m, v, vm, p, wd in zip(
              g_leaves, m_leaves, v_leaves, vm_leaves, p_leaves, wd_leaves, strict=True
            )
            if g is not None
          ]
        )
      )
      outs = [
        (None, None, None, None) if g is None else next(stepped) for g in g_leaves
      ]
      columns = list(zip(*outs, strict=False)) if outs else [()] * 4
      u, m, v, vm = (treedef.unflatten(list(col)) for col in columns)
    count, skipped = count_inc, None
    if finite is not None:
      count = jnp.where(finite, count_inc, state.count)
      skipped = jnp.where(finite, state.skipped, optax.safe_increment(state.skipped))
    return u, ScaleByAdamState(
      count=count,
      mu=m,
      nu=v,
      nu_max=vm if cfg.amsgrad else None,
      skipped=skipped,
    )

  return optax.GradientTransformation(init_fn, update_fn)


def check_state(cfg: _Config, updates: Any, state: Any) -> None:
  """Checks, at trace time, that ``state`` is a :class:`ScaleByAdamState` made
  by ``init`` of this configuration for parameters like ``updates``."""
  if not isinstance(state, ScaleByAdamState):
    hint = ""
    if type(state).__name__ == "ScaleByAdamState":
      hint = (
        " (this is optax's state; convert it with adam_jax.ScaleByAdamState("
        "count=s.count, mu=s.mu, nu=s.nu))"
      )
    raise TypeError(
      "state must be the adam_jax.ScaleByAdamState returned by init, got a"
      f" {type(state).__module__}.{type(state).__name__}{hint}."
    )
  validation.check_tree_matches("updates", updates, "state.mu", fused.logical(state.mu))
  for field, wanted, option in (
    ("nu_max", bool(cfg.amsgrad), "amsgrad"),
    ("skipped", cfg.skip_nonfinite, "skip_nonfinite"),
  ):
    if (getattr(state, field) is not None) != wanted:
      raise ValueError(
        f"state.{field} is {'None' if not wanted else 'set'} but this"
        f" optimizer keeps {'it' if wanted else 'None there'}: the state comes"
        f" from a configuration with a different {option} option. Call init"
        " with this optimizer."
      )
  for field, dtype in (("mu", cfg.mu_dtype), ("nu", cfg.nu_dtype)):
    if dtype is None:
      continue
    # 8-bit storage keeps small leaves in float32.
    if dtype == moments.INT8:
      allowed, shown = {moments.INT8, "float32"}, repr(dtype)
    else:
      allowed = {shown := jnp.dtype(dtype).name}
    tree = getattr(state, field)
    for path, x in validation.leaf_paths(tree, is_leaf=moments.is_quantized):
      if x is None:
        continue
      stored = moments.INT8 if moments.is_quantized(x) else jnp.result_type(x).name
      if stored not in allowed:
        raise ValueError(
          f"state.{field}{path} is stored in {stored} but this optimizer has"
          f" {field}_dtype={shown}: the state comes from another configuration."
          " Call init with this optimizer."
        )


def all_finite(leaves: list[Any]) -> jax.Array:
  """True when no element of any leaf is NaN or infinite (a traced bool)."""
  flags = [jnp.all(jnp.isfinite(g)) for g in leaves if g is not None]
  return functools.reduce(jnp.logical_and, flags, jnp.asarray(True))


def _has_weight_decay(cfg: _Config) -> bool:
  """False only for the static "no coupled decay" (None or a Python 0)."""
  wd = cfg.weight_decay
  if wd is None:
    return False
  return callable(wd) or not (isinstance(wd, (int, float)) and wd == 0)


def _coupled_decay(cfg: _Config, count, params, state_mu, treedef):
  """Per-leaf parameters and coupled decay rates (None where masked out)."""
  validation.check_params(
    params,
    "weight_decay (coupled L2)",
    "weight_decay=None",
    "state.mu",
    fused.logical(state_mu),
  )
  wd = cfg.weight_decay(count) if callable(cfg.weight_decay) else cfg.weight_decay
  flags = validation.mask_leaves("mask", cfg.weight_decay_mask, params, treedef)
  p_leaves = treedef.flatten_up_to(params)
  return p_leaves, [wd if flag else None for flag in flags]


def checked_config(
  b1, b2, eps, eps_root, mu_dtype, nu_dtype, nesterov, **options
) -> _Config:
  """Validates every argument of the Adam family and returns its ``_Config``."""
  validation.check_decay("b1", b1)
  validation.check_decay("b2", b2)
  validation.check_non_negative("eps", eps)
  validation.check_non_negative("eps_root", eps_root)
  validation.check_bool("nesterov", nesterov)
  switches = (
    "bias_correction_mu",
    "bias_correction_nu",
    "maximize",
    "eps_hat",
    "skip_nonfinite",
    "pack_small_leaves",
  )
  for key in switches:
    if key in options:
      validation.check_bool(key, options[key])
  if options.get("weight_decay") is not None:
    validation.check_scalar_or_schedule("weight_decay", options["weight_decay"])
  if "int8_min_size" in options:
    options["int8_min_size"] = validation.check_size(
      "int8_min_size", options["int8_min_size"]
    )
    traced = isinstance(options["int8_min_size"], jax.core.Tracer)
    if moments.INT8 not in (mu_dtype, nu_dtype) and not traced:
      validation.check_unused(
        "int8_min_size",
        options["int8_min_size"],
        moments.INT8_MIN_SIZE,
        "mu_dtype='int8' or nu_dtype='int8'",
      )
  mask = options.get("weight_decay_mask")
  validation.check_mask("mask", mask)
  if options.get("weight_decay") is None:
    validation.check_unused("mask", mask, None, "weight_decay")
  return _Config(
    b1=b1,
    b2=b2,
    eps=eps,
    eps_root=eps_root,
    mu_dtype=validation.storage_dtype("mu_dtype", mu_dtype, allow_complex=True),
    nu_dtype=validation.storage_dtype("nu_dtype", nu_dtype, allow_complex=False),
    nesterov=nesterov,
    **options,
  )


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
  int8_min_size: int = moments.INT8_MIN_SIZE,
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
    An :class:`optax.GradientTransformation` whose state is a
    :class:`ScaleByAdamState`.

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
