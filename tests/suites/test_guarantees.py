"""The properties the guarantees guide (docs/guides/guarantees.md) promises, with hypothesis.

The step-size bound is computed here independently, in float64, from its
definition: with m_hat_t = sum_k w_k g_{t-k} and v_hat_t = sum_k c_k g_{t-k}^2
(k < t), Cauchy-Schwarz gives |m_hat_t| <= sqrt(sum_k w_k^2 / c_k) sqrt(v_hat_t),
with equality when g_{t-k} is proportional to w_k / c_k.
"""

import chex
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax

import adam_jax
from tests._trees import assert_trees_equal
from tests.conftest import optax_mode

LR = 1e-3
# The clip leaves float32 rounding above the bound alone, up to 2^-12 relative,
# and the bound itself is evaluated in float32 (relative error below 2e-5).
SLACK = 2.0**-12 + 2e-5


def weights(t, b1, b2, *, nesterov=False, bias_correction=True, adamax=False):
  """Float64 (w_k, c_k), k = 0..t-1, of m_hat_t and v_hat_t (AdaMax: c_k is
  the factor with u_t >= c_k |g_{t-k}|)."""
  k = np.arange(t, dtype=np.float64)
  bc = (lambda b, n: 1 - b**n) if bias_correction else (lambda b, n: 1.0)
  w = (1 - b1) * b1**k / bc(b1, t)
  if nesterov:
    w = b1 * (1 - b1) * b1**k / bc(b1, t + 1)
    w[0] += (1 - b1) / bc(b1, t)
  if adamax:
    return w, b2**k
  return w, (1 - b2) * b2**k / bc(b2, t)


def bound(t, b1, b2, **variant):
  w, c = weights(t, b1, b2, **variant)
  if variant.get("adamax"):
    return float(np.sum(w / c))
  return float(np.sqrt(np.sum(w * w / c)))


VARIANTS = {
  "adam": ({}, {}),
  "nesterov": ({"nesterov": True}, {"nesterov": True}),
  "no-bias-correction": ({"bias_correction": False}, {"bias_correction": False}),
  "amsgrad": ({"amsgrad": True}, {}),
  "eps_hat": ({"eps_hat": True}, {}),
}


def _run_updates(tx, grads):
  params = jnp.zeros(grads.shape[1:], grads.dtype)
  state = tx.init(params)
  step = jax.jit(tx.update)
  out = []
  for g in grads:
    u, state = step(g, state, params)
    out.append(np.asarray(u, np.float64))
  return np.stack(out), state


@settings(max_examples=20, deadline=None)
@given(
  variant=st.sampled_from(sorted(VARIANTS)),
  b1=st.floats(0.0, 0.99),
  b2=st.floats(0.5, 0.9999),
  t=st.integers(1, 40),
  scale=st.floats(1e-12, 1e12),  # squares representable: no saturation
)
def test_the_step_size_bound_is_attained_and_never_exceeded(variant, b1, b2, t, scale):
  """The adversarial sequence g_{t-k} = scale w_k / c_k reaches the bound at
  step t (eps = 0); no step before it exceeds its own bound."""
  options, shape = VARIANTS[variant]
  w, c = weights(t, b1, b2, **shape)
  seq = (w / c)[::-1] * scale / np.max(w / c)  # oldest first
  grads = jnp.asarray(seq.reshape(t, 1), jnp.float32)
  tx = adam_jax.adam(LR, b1, b2, eps=0.0, **options)
  u, _ = _run_updates(tx, grads)
  bounds = np.array([bound(s, b1, b2, **shape) for s in range(1, t + 1)])
  # The rule computes 1 - b2^t in float32: near b2 = 1 its relative rounding
  # error, eps32 / (1 - b2^t), exceeds the bound's own allowance at small t.
  steps = np.arange(1, t + 1)
  rounding = 2 * float(np.finfo(np.float32).eps) / (1 - b2**steps)
  assert np.all(np.abs(u[:, 0]) <= LR * bounds * (1 + SLACK + rounding))
  if variant not in ("amsgrad",):  # AMSGrad's max can only shrink the step
    assert abs(u[-1, 0]) >= LR * bounds[-1] * (1 - 1e-4), (u[-1, 0] / LR, bounds[-1])


@settings(max_examples=20, deadline=None)
@given(
  variant=st.sampled_from([*sorted(VARIANTS), "adamax"]),
  b1=st.floats(0.0, 0.99),
  b2=st.floats(0.5, 0.9999),
  seed=st.integers(0, 2**16),
  log_scale=st.floats(-38, 38),
)
def test_random_spiky_sequences_stay_within_the_bound(variant, b1, b2, seed, log_scale):
  rng = np.random.RandomState(seed)
  t = 25
  spikes = 10.0 ** rng.uniform(-6, 6, size=(t, 8)) * (rng.rand(t, 8) < 0.5)
  seq = np.clip(rng.randn(t, 8) * spikes * 10.0**log_scale, -3e38, 3e38)
  grads = jnp.asarray(seq, jnp.float32)
  if variant == "adamax":
    tx, shape = adam_jax.adamax(LR, b1, b2, eps=0.0), {"adamax": True}
  else:
    options, shape = VARIANTS[variant]
    tx = adam_jax.adam(LR, b1, b2, eps=0.0, **options)
  u, state = _run_updates(tx, grads)
  bounds = np.array([bound(s, b1, b2, **shape) for s in range(1, t + 1)])
  assert np.all(np.isfinite(u))
  assert np.all(np.abs(u) <= LR * bounds[:, None] * (1 + SLACK))
  assert bool(jnp.all(state[0].nu >= 0))


def test_the_papers_informal_bound_can_be_exceeded():
  """Kingma & Ba, Section 2.1: |Delta_t| <= alpha (1 - b1) / sqrt(1 - b2) when
  (1 - b1) > sqrt(1 - b2). A sequence of many tiny gradients and one large
  one, ending with a run of moderate ones of the same sign, goes past it; the
  rigorous bound holds (and tends to 7.27 alpha for the defaults)."""
  b1, b2, t = 0.9, 0.999, 1000
  w, c = weights(t, b1, b2)
  grads = jnp.asarray(((w / c)[::-1] / np.max(w / c)).reshape(t, 1), jnp.float32)
  u, _ = _run_updates(adam_jax.adam(LR, eps=0.0), grads)
  paper = (1 - b1) / np.sqrt(1 - b2)
  step = abs(u[-1, 0]) / LR
  assert step > 1.8 * paper, (step, paper)  # 5.78 vs 3.16
  assert step <= bound(t, b1, b2) * (1 + SLACK)
  assert abs(bound(20000, b1, b2) - 7.27) < 0.01


@settings(max_examples=15, deadline=None)
@given(
  seed=st.integers(0, 2**16),
  power=st.integers(-40, 40),  # (g 2^p)^2 (1 - b2) stays a normal float32
  factor=st.floats(1e-10, 1e10),
  nesterov=st.booleans(),
  amsgrad=st.booleans(),
)
def test_scale_invariance_with_zero_eps(seed, power, factor, nesterov, amsgrad):
  """Gradients times c give the same update when eps = 0: bit for bit for a
  power of two (every operation scales exactly), to rounding otherwise, as
  long as the scaled squares stay normal floats (below that, v_t loses bits
  and the step saturates at the bound instead)."""
  rng = np.random.RandomState(seed)
  grads = jnp.asarray(rng.randn(12, 5) * (rng.rand(12, 5) < 0.7), jnp.float32)
  tx = adam_jax.adam(LR, eps=0.0, nesterov=nesterov, amsgrad=amsgrad)
  u, _ = _run_updates(tx, grads)
  u2, _ = _run_updates(tx, grads * jnp.float32(2.0**power))
  np.testing.assert_array_equal(u, u2)
  u3, _ = _run_updates(tx, grads * jnp.float32(factor))
  np.testing.assert_allclose(u3, u, rtol=1e-5, atol=1e-7 * LR)


EXTREMES = {
  "float32": [3.4028235e38, -3.4028235e38, 1e38, 1e-45, 1e-38, 1.0, 0.0, -1e30],
  "bfloat16": [3.38e38, -3.38e38, 1e-38, 9.2e-41, 1.0, 0.0],
  "float16": [65504.0, -65504.0, 6e-8, 6.1e-5, 1.0, 0.0],
}


@settings(max_examples=25, deadline=None)
@given(
  dtype=st.sampled_from(sorted(EXTREMES)),
  storage=st.sampled_from([None, "float32", "bfloat16", "float16"]),
  name=st.sampled_from(
    ["adam", "nadam", "amsgrad-raw", "eps_hat", "adamax", "amsgrad"]
  ),
  eps=st.sampled_from([0.0, 1e-8]),
  seed=st.integers(0, 2**16),
)
def test_updates_finite_and_v_non_negative_at_any_magnitude(
  dtype, storage, name, eps, seed
):
  """Finite gradients anywhere in the dtype's range (largest, subnormal, 0),
  with every storage format: finite updates within the bound, v >= 0, and no
  moment stuck at infinity."""
  rng = np.random.RandomState(seed)
  values = np.asarray(EXTREMES[dtype], np.float64)
  seq = rng.choice(values, size=(12, 6)) * rng.choice([-1.0, 1.0], size=(12, 6))
  grads = jnp.asarray(seq.astype(np.float32)).astype(dtype)
  make = {
    "adam": lambda: adam_jax.adam(LR, eps=eps, mu_dtype=storage, nu_dtype=storage),
    "nadam": lambda: adam_jax.nadam(LR, eps=eps, mu_dtype=storage, nu_dtype=storage),
    "amsgrad-raw": lambda: adam_jax.adam(LR, eps=eps, amsgrad=True, nu_dtype=storage),
    "eps_hat": lambda: adam_jax.adam(LR, eps=eps, eps_hat=True, nu_dtype=storage),
    "adamax": lambda: adam_jax.adamax(LR, eps=eps),
    "amsgrad": lambda: adam_jax.amsgrad(LR, eps=eps, mu_dtype=storage),
  }[name]
  tx = make()
  u, state = _run_updates(tx, grads)
  assert u.dtype == np.float64 and np.all(np.isfinite(u)), u
  shape = {"nadam": {"nesterov": True}, "adamax": {"adamax": True}}.get(name, {})
  bounds = np.array([bound(s, 0.9, 0.999, **shape) for s in range(1, 13)])
  # The update is rounded to the gradient's dtype twice (Adam step, learning rate).
  rounding = 2 * float(jnp.finfo(dtype).eps)
  assert np.all(np.abs(u) <= LR * bounds[:, None] * (1 + SLACK + rounding))
  for moment in (state[0].nu, getattr(state[0], "nu_max", None)):
    if moment is not None:
      assert bool(jnp.all(moment >= 0))
  # A square beyond the dtype may leave v at inf for one step; the next step
  # reads it back as the largest finite value, so it decays again.
  params = jnp.zeros(grads.shape[1:], grads.dtype)
  _, state = tx.update(jnp.ones_like(params), state, params)
  for moment in (state[0].mu, state[0].nu, getattr(state[0], "nu_max", None)):
    if moment is not None:
      assert bool(jnp.all(jnp.isfinite(moment))), moment


def _as_float64(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def _tree(draw_shapes, dtype, seed):
  rng = np.random.RandomState(seed)
  leaves = [jnp.asarray(rng.randn(*s), dtype) for s in draw_shapes]
  return {"a": leaves[0], "nested": {"b": leaves[1:3], "c": tuple(leaves[3:])}}


shapes = st.lists(
  st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple), min_size=4, max_size=6
)
configs = st.fixed_dictionaries(
  {
    "b1": st.floats(0.0, 0.99),
    "b2": st.floats(0.0, 0.9999),
    "eps": st.floats(0.0, 1e-3),
    "nesterov": st.booleans(),
    "amsgrad": st.booleans(),
    "eps_hat": st.booleans(),
    "bias_correction": st.booleans(),
    "skip_nonfinite": st.booleans(),
    "mu_dtype": st.sampled_from([None, "float32", "bfloat16"]),
    "nu_dtype": st.sampled_from([None, "float32", "bfloat16", "float16"]),
  }
)


@settings(max_examples=3, deadline=None)
@given(
  shape_list=shapes,
  dtype=st.sampled_from(["float32", "bfloat16", "float16"]),
  config=configs,
  seed=st.integers(0, 2**16),
)
def test_jit_equals_eager_and_state_dtypes_and_shapes_are_stable(
  shape_list, dtype, config, seed
):
  params = _tree(shape_list, dtype, seed)
  tx = adam_jax.adamw(1e-2, **config)
  init = tx.init(params)
  eager_state, jit_state = init, init
  step = jax.jit(tx.update)
  rng = np.random.RandomState(seed + 1)
  for _ in range(3):
    g = jax.tree.map(lambda p: jnp.asarray(rng.randn(*p.shape), p.dtype), params)
    u_eager, eager_state = tx.update(g, eager_state, params)
    u_jit, jit_state = step(g, jit_state, params)
    # Same numbers to float32 rounding (eager runs op by op, jit fuses), in the
    # gradient's dtype.
    chex.assert_trees_all_equal_dtypes(u_eager, u_jit)
    ulp = float(jnp.finfo(dtype).eps)
    chex.assert_trees_all_close(
      _as_float64(u_eager), _as_float64(u_jit), rtol=2 * ulp, atol=1e-7
    )
    chex.assert_trees_all_equal_shapes_and_dtypes(u_jit, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(jit_state, init, eager_state)


@settings(max_examples=1, deadline=None)
@given(
  cases=st.lists(st.tuples(st.integers(0, 2**16), configs), min_size=6, max_size=6)
)
def test_deterministic_across_runs(cases):
  """Six configurations stepped, every compiled step thrown away, then
  compiled from scratch and stepped again: the same bits. (One cache clear
  for all six: a clear makes every later test in this process compile
  again.)"""

  def run(seed, config):
    params = _tree([(3, 4), (4,), (2, 2), ()], "float32", seed)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)
    tx = adam_jax.adamw(1e-2, **config)
    step = jax.jit(tx.update)
    state = tx.init(params)
    outs = []
    for _ in range(3):
      u, state = step(grads, state, params)
      outs.append(u)
    return outs, state

  first = [run(seed, config) for seed, config in cases]
  jax.clear_caches()  # recompile from scratch
  assert_trees_equal([run(seed, config) for seed, config in cases], first)


def test_count_saturates_without_overflow_or_nan():
  near_max = jnp.asarray(2**31 - 2, jnp.int32)
  for tx in (
    adam_jax.adam(LR),
    adam_jax.adam(LR, nesterov=True, skip_nonfinite=True),
    adam_jax.amsgrad(optax.constant_schedule(LR)),
  ):
    params = jnp.ones(4)
    state = tx.init(params)
    state = jax.tree.map(
      lambda x: near_max if (x.dtype == jnp.int32 and x.shape == ()) else x, state
    )
    # Every counter, including the schedule's and skip counter, now sits near
    # the int32 maximum.
    g = jnp.asarray([1.0, -2.0, 0.0, 3e-3])
    with optax_mode():
      for _ in range(2):
        u, state = jax.jit(tx.update)(g, state, params)
        assert int(state[0].count) == 2**31 - 1
        chex.assert_tree_all_finite(u)
    # At t -> infinity, b**t = 0: the step is m / (sqrt(v) + eps).
    assert float(jnp.max(jnp.abs(u))) <= LR * 8
