r"""The Adam rule for one array: ``(g, m, v) -> (update, m, v)``.

Every optimizer of adam_jax is this one rule with options (:class:`Config`):
Kingma & Ba's Algorithm 1, with Nesterov momentum, AMSGrad, AdaMax's infinity
norm, the paper's :math:`\hat\epsilon` form, coupled weight decay, ``maximize``
and switchable bias corrections. Moments arrive decoded (``storage``) and are
computed in at least float32; the update leaves in the gradient's dtype,
bounded by the largest step Adam can take (:func:`step_bound`).
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax

from adam_jax._src import storage
from adam_jax._src.config import Config

# Relative allowance above the step bound for float32 rounding (of the step
# and of the bound itself) before the clip acts.
BOUND_SLACK = 2.0**-12


def cast_hyperparameter(x: Any, dtype: Any) -> Any:
  """Python numbers stay Python (weak-typed, so ``1 - b`` is exact in f64 and
  then rounded once, as in optax); arrays and traced values become ``dtype``
  (so a bfloat16 ``b2`` from ``inject_hyperparams`` is widened before use)."""
  if isinstance(x, (int, float)) and not isinstance(x, bool):
    return x
  return jnp.asarray(x).astype(dtype)


def ema_coefficients(b: Any, t: jax.Array) -> tuple[Any, Any, Any]:
  """Returns ``(keep, rate, bias_correction)`` of an exponential moving average.

  The moment update is ``m_t = keep * m_{t-1} + rate * x_t`` and the bias
  corrected moment is ``m_t / bias_correction``, with
  ``keep = b``, ``rate = 1 - b`` and ``bias_correction = 1 - b**t``
  (Kingma & Ba, 2015, Algorithm 1).

  For an array ``b`` equal to 1 (only reachable through a rounded low-precision
  hyperparameter, e.g. ``bfloat16(0.999) == 1``) all three are replaced by
  their limits as ``b -> 1``: ``keep = 1 - 1/t``, ``rate = 1/t`` and
  ``bias_correction = 1``, so the stored moment is the running mean of ``x``,
  which is exactly the limit of the bias-corrected EMA. Python numbers are
  validated to lie in [0, 1) and take the plain branch (no extra ops).

  Args:
    b: decay rate, a Python number or an array already in ``t``'s dtype.
    t: the step count (after increment), as a float array of at least
      float32 precision.
  """
  if isinstance(b, (int, float)):
    return b, 1 - b, 1 - b**t
  is_one = b == 1
  one = jnp.ones_like(t)
  keep = jnp.where(is_one, one - one / t, b)
  rate = jnp.where(is_one, one / t, one - b)
  bias_correction = jnp.where(is_one, one, one - b**t)
  return keep, rate, bias_correction


def abs_sq(g: jax.Array) -> jax.Array:
  """``|g|^2``, real for complex ``g`` (``g * g`` for real ``g``)."""
  if jnp.iscomplexobj(g):
    return (g.conj() * g).real
  return g * g


def safe_divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
  """``numerator / denominator``, but exactly 0 where the numerator is 0.

  With ``eps = eps_root = 0`` (allowed) an all-zero gradient would otherwise
  give ``0 / 0 = NaN``; the limit of the Adam step there is 0.
  """
  zero = jnp.zeros_like(numerator)
  return jnp.where(numerator == zero, zero, numerator / denominator)


def saturate(x: jax.Array) -> jax.Array:
  """``x`` clipped to its dtype's finite range: overflow saturates at the
  largest finite value instead of becoming infinite. NaN stays NaN."""
  big = float(jnp.finfo(x.dtype).max)
  return jnp.clip(x, -big, big)


def positive(x: Any) -> bool:
  """A Python number that stays > 0 in any compute dtype (at least the
  smallest normal float32: subnormals may be flushed to zero). Arrays and
  traced values may be 0."""
  if not isinstance(x, (int, float)) or isinstance(x, bool):
    return False
  return x >= float(jnp.finfo(jnp.float32).tiny)


class Clock:
  """The step count of one update (``t``, already incremented) and the
  scalars that every leaf of it shares: the step bound, once per dtype."""

  def __init__(self, cfg: Config, count: jax.Array, **values: Any):
    self.cfg = cfg
    self.t = count
    self.t_next = optax.safe_increment(count)
    # Per-step values of schedules evaluated once by the transform (the slow
    # EMA's ``b3`` and ``alpha``, ADOPT's ``clip`` and ``first`` step flag).
    self.values = values
    self._bounds: dict[Any, jax.Array] = {}

  def one(self, dtype: Any) -> jax.Array:
    """1 in ``dtype``, computed from ``t`` (``t / t``, ``t >= 1``) so that XLA
    cannot fold it: dividing by it keeps a value's bits and stops XLA from
    copying the division into several consumers (see ``storage.settled``)."""
    t = self.t.astype(dtype)
    return t / t

  def bound(self, dtype: Any) -> jax.Array:
    """:func:`step_bound` at ``t`` in ``dtype``."""
    if dtype not in self._bounds:
      bound = step_bound(self.cfg, self.t.astype(dtype), dtype)
      if self.cfg.slow:
        alpha = jnp.abs(jnp.asarray(self.values["alpha"]).astype(dtype))
        slow = slow_bound(self.cfg, self.values["b3"], self.t.astype(dtype), dtype)
        bound = jnp.minimum(bound + alpha * slow, jnp.finfo(dtype).max)
      self._bounds[dtype] = bound
    return self._bounds[dtype]


def leaf_step(clock: Clock, g, moments, p=None, wd=None, settle=None):
  """One Adam step for one array: ``(g, moments) -> (u, *new moments)``.

  ``moments`` are the decoded ``(m, v, v_max, slow)``: ``v_max`` is None
  without AMSGrad, ``slow`` None without AdEMAMix's slow EMA and ``m`` None
  without a first moment. Everything is computed in
  ``compute_dtype(g.dtype)`` (>= float32); the update comes back in
  ``g.dtype`` and the moments in their stored dtypes. ``wd`` is the weight
  decay for this array (None: none; coupled unless ``cfg.decoupled``) and
  ``p`` its parameter. ``settle``, if given, maps the new moments to the
  arrays that both the update and the storage read (``storage.settled``:
  the same values, computed once).

  For finite real gradients the update is finite and ``|u| <= bound`` (up to
  ``BOUND_SLACK`` of rounding) at any magnitude: a ``v_t`` that overflowed
  is read back as its dtype's largest value (so it decays again), a narrower
  storage dtype saturates, and the ratio ``m_hat / denominator`` (which can
  only leave the bound through overflow or underflow, e.g. ``v_t`` flushed to
  0 with ``eps = 0``) is clipped to it. Inside the representable range
  nothing changes, bit for bit. (``m_t`` itself is not clamped in the compute
  dtype: it can overflow only within an ulp of the largest float, and an
  extra clamp there changes how XLA fuses, hence rounds, the common case.) A
  NaN or infinite gradient element gives a NaN update there (as in optax: it
  makes ``v_t`` NaN, so the clip keeps it NaN), never a plausible-looking
  finite one. Complex parameters keep the plain formula. The variant options
  (RAdam's rectification, Adam-atan2, update clipping, cautious updates)
  act on the bounded ratio (:func:`variant_update`); ADOPT takes its own
  path (:func:`adopt_step`).
  """
  m, v, v_max, slow = moments
  if clock.cfg.adopt:
    return adopt_step(clock, g, m, v, p, wd, settle)
  gc, new = new_moments(clock, g, m, v, slow, p, wd)
  if settle is not None:
    new = settle(new)
  m_new, v_new, slow_new = new
  u, v_max_new = scaled_update(clock, gc, m_new, v_new, v_max, slow_new)
  u = variant_update(clock, u, gc, v_new, p, wd)
  return (
    u.astype(g.dtype),
    *_stored(clock, (m_new, v_new, v_max_new, slow_new), (m, v, v_max, slow)),
  )


def _stored(clock: Clock, new, old):
  """Each new moment in its stored dtype (None where there is none). Into a
  narrower float it is rounded stochastically (``storage.store`` with a key
  of the step count and the moment's index), unless the configuration asks
  for rounding to nearest."""
  stochastic = clock.cfg.moment_rounding == "stochastic"
  out: list[Any] = []
  for salt, (x, o) in enumerate(zip(new, old, strict=True)):
    if x is None:
      out.append(None)
      continue
    narrower = jnp.finfo(o.dtype).bits < jnp.finfo(x.dtype).bits
    key = storage.rounding_key(clock.t, salt) if stochastic and narrower else None
    out.append(storage.store(x, o.dtype, key))
  return tuple(out)


def new_moments(clock: Clock, g, m, v, slow=None, p=None, wd=None):
  """``(g_t, (m_t, v_t, slow_t))``: the gradient the moments see and the new
  moments, in the compute dtype (None for a moment the state does not
  keep)."""
  cfg = clock.cfg
  cdt = storage.compute_dtype(g.dtype)
  rdt = storage.real_dtype(cdt)
  gc = _gradient(cfg, g, p, wd, cdt, rdt)
  tc = clock.t.astype(rdt)
  m_new = slow_new = None
  if m is not None:
    keep1, rate1, _ = ema_coefficients(cast_hyperparameter(cfg.b1, rdt), tc)
    m_new = _as_compute(rate1, cdt) * gc + _as_compute(keep1, cdt) * m.astype(cdt)
  if slow is not None:
    b3 = cast_hyperparameter(clock.values["b3"], rdt)
    slow_new = _as_compute(1 - b3, cdt) * gc + _as_compute(b3, cdt) * slow.astype(cdt)
  return gc, (m_new, _second_moment(cfg, gc, v, tc, rdt), slow_new)


def scaled_update(clock: Clock, gc, m_new, v_new, v_max, slow_new=None):
  """``(u_t, AMSGrad's new maximum or None)``: the bias-corrected ratio of
  the moments, bounded by :func:`step_bound`."""
  cfg = clock.cfg
  cdt = gc.dtype
  rdt = storage.real_dtype(cdt)
  tc, tc_next = clock.t.astype(rdt), clock.t_next.astype(rdt)
  b1 = cast_hyperparameter(cfg.b1, rdt)
  bc2 = None
  if cfg.norm == "l2":
    _, _, bc2 = ema_coefficients(cast_hyperparameter(cfg.b2, rdt), tc)
  if m_new is None:  # no first moment: m_t = g_t
    m_hat = gc
  else:
    m_hat = _corrected_first(cfg, m_new, gc, b1, tc, tc_next, cdt)
  if slow_new is not None:  # AdEMAMix: the slow EMA, not bias-corrected
    m_hat = (
      m_hat
      + _as_compute(cast_hyperparameter(clock.values["alpha"], rdt), cdt) * slow_new
    )
  if cfg.atan2:
    return _atan2_ratio(cfg, m_hat, v_new, bc2, rdt), None
  denom, v_max_new = _denominator(cfg, v_new, v_max, bc2, rdt)
  u = _bounded_ratio(cfg, m_hat, denom, clock.bound, cdt, rdt)
  if cfg.rectify_threshold is not None:
    u = _rectified(cfg, u, m_hat, tc, rdt)
  return u, v_max_new


def variant_update(clock: Clock, u, gc, v_new=None, p=None, wd=None):
  """The step of the per-tensor options from the ratio ``u``: cautious
  masking (Liang et al., 2024), then AdamW's decoupled decay when it lives
  in the rule (``cfg.decoupled``), then StableAdamW's update clipping
  (Wortsman et al., 2023), which scales the decay too."""
  cfg = clock.cfg
  if cfg.cautious:
    u = cautious(u, gc)
  if cfg.decoupled and wd is not None:
    rdt = storage.real_dtype(u.dtype)
    u = u + cast_hyperparameter(wd, rdt) * jnp.asarray(p).astype(u.dtype)
  if cfg.update_clipping:
    u = u / _update_rms(clock, gc, v_new)
  return u


def cautious(u: jax.Array, g: jax.Array) -> jax.Array:
  r"""``u`` where it agrees in sign with ``g``, else 0, rescaled by
  :math:`n / (\#\{u g > 0\} + 1)` so the step keeps its size (C-AdamW,
  Liang et al., 2024, as pytorch-optimizer's ``apply_cautious``)."""
  agree = (u * g > 0).astype(u.dtype)
  return u * (agree * (u.size / (jnp.sum(agree) + 1)))


def _update_rms(clock: Clock, gc, v_new):
  """StableAdamW's divisor ``max(1, sqrt(mean(g^2 / max(v_hat, eps^2))))``."""
  cfg = clock.cfg
  rdt = gc.dtype
  _, _, bc2 = ema_coefficients(cast_hyperparameter(cfg.b2, rdt), clock.t.astype(rdt))
  eps = cast_hyperparameter(cfg.eps, rdt)
  floor = jnp.maximum(jnp.asarray(eps * eps, rdt), jnp.finfo(rdt).tiny)
  # Both sides saturated: an overflowed g^2 or v_hat gives a large (or
  # infinite, clipping the step to 0) ratio, never inf / inf = NaN.
  big = float(jnp.finfo(rdt).max)
  v_hat = jnp.maximum(_corrected_second(cfg, v_new, bc2, rdt), floor)
  ratio = jnp.minimum(abs_sq(gc), big) / v_hat
  return jnp.maximum(jnp.sqrt(jnp.mean(ratio)), 1)


def _corrected_second(cfg: Config, v, bc2, rdt):
  """``v_hat``: ``v / (1 - b2^t)`` (``v`` without bias correction), at most
  the dtype's largest value: ``sqrt(inf)`` would turn ``m_hat / inf`` into 0
  (``v_hat >= 0``: one side)."""
  v_hat = v / bc2 if cfg.bias_correction_nu else v
  return jnp.minimum(v_hat, float(jnp.finfo(rdt).max))


def _atan2_ratio(cfg: Config, m_hat, v_new, bc2, rdt):
  """Adam-atan2's ``a * atan2(m_hat, b * sqrt(v_hat))``: bounded by
  ``a * pi / 2`` and scale-invariant, with no ``eps``."""
  a = cast_hyperparameter(cfg.atan2_a, rdt)
  b = cast_hyperparameter(cfg.atan2_b, rdt)
  v_hat = _corrected_second(cfg, v_new, bc2, rdt)
  return a * jnp.arctan2(m_hat, b * jnp.sqrt(v_hat))


def _rectified(cfg: Config, u, m_hat, tc, rdt):
  r"""RAdam: ``r_t u`` once :math:`\rho_t` reaches the threshold, else the
  bias-corrected first moment alone (Liu et al., 2020, Algorithm 2), with
  :math:`\rho_\infty = 2/(1-\beta_2) - 1`, :math:`\rho_t = \rho_\infty -
  2t\beta_2^t/(1-\beta_2^t)` and :math:`r_t = \sqrt{(\rho_t-4)(\rho_t-2)
  \rho_\infty / ((\rho_\infty-4)(\rho_\infty-2)\rho_t)}`."""
  b2 = cast_hyperparameter(cfg.b2, rdt)
  threshold = cast_hyperparameter(cfg.rectify_threshold, rdt)
  # rho_t is a difference of two terms near 2 / (1 - b2): b2^t and 1 - b2^t
  # come from log1p/expm1 so that it keeps its digits in float32 (optax's
  # direct powers lose about 1% of r_t near the threshold).
  rate = jnp.asarray(1 - b2).astype(rdt)
  log_b2 = jnp.log1p(-rate)
  rho_inf = 2 / rate - 1
  rho = rho_inf - 2 * tc * jnp.exp(tc * log_b2) / -jnp.expm1(tc * log_b2)
  square = (rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)
  r = jnp.sqrt(jnp.maximum(square, 0))  # 0 where unused (rho < 4): no NaN
  return jnp.where(rho >= threshold, r.astype(u.dtype) * u, saturate(m_hat))


def adopt_step(clock: Clock, g, m, v, p=None, wd=None, settle=None):
  r"""ADOPT (Taniguchi et al., 2024, Algorithm 2) for one array.

  The gradient is normalized by the *previous* second moment, clipped, and
  only then averaged; the step is the first moment itself:

  .. math::

    m_t = \beta_1 m_{t-1} + (1-\beta_1) \operatorname{clip}(g_t /
    \max(\sqrt{v_{t-1}}, \varepsilon), c_t), \quad
    v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \quad u_t = m_t

  At the first call (count 0) only :math:`v_0 = g_0^2` is set and the step
  is 0, as in optax (whose arithmetic this follows: the decays are selected
  by the count, as arrays). Returns ``(u, m, v, None, None)``.
  """
  cfg = clock.cfg
  cdt = storage.compute_dtype(g.dtype)
  rdt = storage.real_dtype(cdt)
  gc = _gradient(cfg, g, p, wd, cdt, rdt)
  first = clock.values["first"]
  b1 = jnp.where(first, 1, jnp.asarray(cfg.b1).astype(rdt)).astype(rdt)
  b2 = jnp.where(first, 0, jnp.asarray(cfg.b2).astype(rdt)).astype(rdt)
  eps = cast_hyperparameter(cfg.eps, rdt)
  v_prev = storage.read_back(v, rdt)
  normed = saturate(safe_divide(gc, jnp.maximum(jnp.sqrt(v_prev), eps)))
  if cfg.adopt_clip is not None:
    c = jnp.asarray(clock.values["clip"]).astype(rdt)
    normed = jnp.clip(normed, -c, c)
  m_new = saturate((1 - b1) * normed + b1 * m.astype(cdt))
  v_new = (1 - b2) * abs_sq(gc) + b2 * v_prev + (gc - gc)
  if settle is not None:
    m_new, v_new, _ = settle((m_new, v_new, None))
  u = m_new
  if cfg.nesterov:
    u = (1 - b1) * normed + b1 * m_new
  u = variant_update(clock, u, gc, None, p, wd)
  new = _stored(clock, (m_new, v_new, None, None), (m, v, None, None))
  return (u.astype(g.dtype), *new)


def _gradient(cfg: Config, g, p, wd, cdt, rdt):
  """The gradient the moments see: in the compute dtype, negated for
  ``maximize``, plus the coupled decay ``wd * p``."""
  gc = g.astype(cdt)
  if cfg.maximize:
    gc = -gc
  if wd is not None and not cfg.decoupled:
    gc = gc + cast_hyperparameter(wd, rdt) * jnp.asarray(p).astype(cdt)
  return gc


def _second_moment(cfg: Config, gc, v, tc, rdt):
  """``v_t``: the EMA of ``|g|^2`` (or AdaMax's infinity norm)."""
  b2 = cast_hyperparameter(cfg.b2, rdt)
  if cfg.norm == "max":
    eps = cast_hyperparameter(cfg.eps, rdt)
    return jnp.maximum(jnp.abs(gc) + eps, b2 * v.astype(rdt))
  keep2, rate2, _ = ema_coefficients(b2, tc)
  # v_t may overflow to inf for one step (g^2 beyond the dtype); reading it
  # back saturated lets it decay again instead of freezing the parameter.
  v_new = rate2 * abs_sq(gc) + keep2 * storage.read_back(v, rdt)
  if gc.dtype == rdt:
    # An infinite gradient makes v_t NaN (not inf, which a huge finite one
    # also gives), so that the clipped ratio stays NaN for it: the update of
    # a non-finite gradient is NaN, never a plausible finite step. (gc - gc
    # is exactly +0 for finite gc, and v_new + 0 = v_new for v_new >= 0.)
    v_new = v_new + (gc - gc)
  return v_new


def _corrected_first(cfg: Config, m_new, gc, b1, tc, tc_next, cdt):
  """The bias-corrected first moment, or Nesterov's look-ahead
  ``b1 m_t / (1 - b1^(t+1)) + (1 - b1) g_t / (1 - b1^t)``."""
  _, rate1, bc1 = ema_coefficients(b1, tc)
  if cfg.nesterov:
    keep1n, _, bc1n = ema_coefficients(b1, tc_next)
    keep1nc, rate1c = _as_compute(keep1n, cdt), _as_compute(rate1, cdt)
    if cfg.bias_correction_mu:
      ahead = keep1nc * (m_new / _as_compute(bc1n, cdt))
      now = rate1c * (gc / _as_compute(bc1, cdt))
    else:
      ahead, now = keep1nc * m_new, rate1c * gc
    # Each term may overflow, with opposite signs (inf - inf = NaN).
    if gc.dtype == storage.real_dtype(cdt):
      return saturate(ahead) + saturate(now)
    return ahead + now
  if cfg.bias_correction_mu:
    return m_new / _as_compute(bc1, cdt)
  return m_new


def _denominator(cfg: Config, v_new, v_max, bc2, rdt):
  """``(sqrt(v_hat + eps_root) + eps, AMSGrad's new maximum or None)``,
  with the paper's eps-hat placement on request."""
  eps = cast_hyperparameter(cfg.eps, rdt)
  eps_root = cast_hyperparameter(cfg.eps_root, rdt)
  if cfg.norm == "max":
    return v_new, None  # the infinity norm needs no bias correction
  v_max_new = None
  v_used = v_new
  if cfg.amsgrad == "raw":
    v_max_new = v_used = jnp.maximum(storage.read_back(v_max, rdt), v_new)
  if cfg.eps_hat:
    # m_hat / ((sqrt(v) + eps) / sqrt(1 - b2^t)): eps meets the raw moment.
    denom = jnp.sqrt(v_used + eps_root) + eps
    if cfg.bias_correction_nu:
      denom = denom / jnp.sqrt(bc2)
    return denom, v_max_new
  v_hat = _corrected_second(cfg, v_used, bc2, rdt)
  if cfg.amsgrad == "corrected":
    v_max_new = v_hat = jnp.maximum(v_max.astype(rdt), v_hat)
  return jnp.sqrt(v_hat + eps_root) + eps, v_max_new


def _bounded_ratio(cfg: Config, m_hat, denom, bound, cdt, rdt):
  """``m_hat / denom``, clipped to the step bound for real arrays."""
  if positive(cfg.eps) or (cfg.norm == "l2" and positive(cfg.eps_root)):
    u = m_hat / denom.astype(cdt)  # denom >= eps > 0: never 0 / 0
  else:
    u = safe_divide(m_hat, denom.astype(cdt))
  if cdt != rdt:
    return u  # complex: the plain formula
  # The clip allows BOUND_SLACK of rounding above the bound: at t = 1 every
  # element sits exactly on it (|m_hat| = sqrt(v_hat)), and the rounding
  # there must stay optax's, bit for bit.
  b = bound(rdt) * (1 + BOUND_SLACK)
  return jnp.clip(u, -b, b)  # NaN stays NaN


def step_bound(cfg: Config, t: jax.Array, dtype: Any) -> jax.Array:
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
    bound = (one - b1) / bc1 * geometric_sum(b1, b2, t)
  else:
    bc2 = one - b2**t if cfg.bias_correction_nu else one
    g = geometric_sum(b1 * b1, b2, t)
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


def slow_bound(cfg: Config, b3: Any, t: jax.Array, dtype: Any) -> jax.Array:
  r"""The largest :math:`|m^{slow}_t| / \sqrt{\hat v_t}` for AdEMAMix's slow
  EMA (weights :math:`(1-\beta_3)\beta_3^k`, no bias correction), by the
  Cauchy--Schwarz argument of :func:`step_bound`: :math:`(1-\beta_3)
  \sqrt{(1-\beta_2^t) G / (1-\beta_2)}` with :math:`G = \sum_{k<t}
  (\beta_3^2/\beta_2)^k`. A ``b3`` schedule has no such closed form: its
  bound is the dtype's largest value (no clipping)."""
  if callable(cfg.slow_b3):
    return jnp.asarray(jnp.finfo(dtype).max, dtype)
  b3 = jnp.asarray(b3).astype(dtype)
  b2 = jnp.asarray(cfg.b2).astype(dtype)
  one = jnp.ones([], dtype)
  bc2 = one - b2**t if cfg.bias_correction_nu else one
  square = (one - b3) ** 2 * bc2 / (one - b2) * geometric_sum(b3 * b3, b2, t)
  bound = jnp.where((b3 == one) | (b2 == one), jnp.inf, jnp.sqrt(square))
  return jnp.minimum(bound, jnp.finfo(dtype).max)


def geometric_sum(x: jax.Array, y: jax.Array, t: jax.Array) -> jax.Array:
  """``sum_{k<t} (x / y)**k`` for ``0 <= x, y < 1``, accurate near ``x = y``."""
  delta = (x - y) / y  # the ratio minus 1, without first rounding the ratio
  safe = jnp.where((y == 0) | (delta == 0), jnp.ones_like(delta), delta)
  power_sum = jnp.expm1(t * jnp.log1p(safe)) / safe
  at_zero = jnp.where(x == 0, jnp.ones_like(x), jnp.inf)  # 0**0 = 1
  return jnp.where(y == 0, at_zero, jnp.where(delta == 0, t, power_sum))


def _as_compute(x, dtype):
  """Casts an array coefficient to the (maybe complex) compute dtype."""
  return x if isinstance(x, (int, float)) else x.astype(dtype)
