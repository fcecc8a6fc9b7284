"""skip_nonfinite: a step with a NaN or infinite gradient is skipped, losslessly.

On a bad step the update is exactly zero and the whole optimizer state is
bitwise what it was, except ``skipped``, which counts such steps. The good
steps are compared with the same optimizer *without* the guard run on the
sequence with the bad steps removed: equal to float32 rounding (the select
changes how XLA fuses the step, which may move a multiply-add by an ulp).
"""

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from tests._procs import run_python
from tests._trees import assert_trees_equal
from tests._trees import max_relative_difference
from tests.conftest import optax_mode

SCHEDULE = optax.linear_schedule(0.1, 0.01, 20)

# (id, factory taking skip_nonfinite, params dtype)
CASES = [
  ("adam", lambda s: adam_jax.adam(0.05, skip_nonfinite=s), jnp.float32),
  (
    "adam-amsgrad",
    lambda s: adam_jax.adam(0.05, amsgrad=True, skip_nonfinite=s),
    jnp.float32,
  ),
  (
    "adamw-mask-schedules",
    lambda s: adam_jax.adamw(
      SCHEDULE,
      weight_decay=optax.linear_schedule(0.1, 0.0, 20),
      mask={"w": True, "b": False},
      skip_nonfinite=s,
    ),
    jnp.float32,
  ),
  (
    "adamw-decouple_lr-average",
    lambda s: adam_jax.adamw(
      0.05, weight_decay=0.1, decouple_lr=True, average_decay=0.9, skip_nonfinite=s
    ),
    jnp.float32,
  ),
  ("nadam", lambda s: adam_jax.nadam(0.05, skip_nonfinite=s), jnp.float32),
  ("nadamw", lambda s: adam_jax.nadamw(0.05, skip_nonfinite=s), jnp.float32),
  ("amsgrad", lambda s: adam_jax.amsgrad(SCHEDULE, skip_nonfinite=s), jnp.float32),
  (
    "adamax-coupled",
    lambda s: adam_jax.adamax(0.05, weight_decay=0.1, skip_nonfinite=s),
    jnp.float32,
  ),
  (
    "scale_by_adam-coupled",
    lambda s: adam_jax.scale_by_adam(weight_decay=0.1, skip_nonfinite=s),
    jnp.float32,
  ),
  (
    "bf16-state",
    lambda s: adam_jax.adam(
      0.05, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16, skip_nonfinite=s
    ),
    jnp.float32,
  ),
  (
    "bf16-params-f32-state",
    lambda s: adam_jax.adamw(0.05, mu_dtype=jnp.float32, skip_nonfinite=s),
    jnp.bfloat16,
  ),
  ("f16-params", lambda s: adam_jax.adam(0.05, skip_nonfinite=s), jnp.float16),
]
BAD = [np.nan, np.inf, -np.inf]


def _params(dtype):
  return {
    "w": jnp.linspace(-1.0, 1.0, 6, dtype=dtype).reshape(2, 3),
    "b": jnp.ones(3, dtype),
  }


def _grads(params, steps, seed):
  """Finite gradients, with a bad value planted in one leaf at steps 2, 5, 6."""
  rng = np.random.RandomState(seed)
  out, bad_steps = [], {2: 0, 5: 1, 6: 2}
  for t in range(steps):
    g = jax.tree.map(lambda p: np.asarray(rng.randn(*p.shape), p.dtype), params)
    if t in bad_steps:
      g["w"] = g["w"].copy()
      g["w"][1, t % 3] = BAD[bad_steps[t]]
    out.append(jax.tree.map(jnp.asarray, g))
  return out, set(bad_steps)


def _run(tx, params, grads, jit=True):
  update = jax.jit(tx.update) if jit else tx.update
  state = tx.init(params)
  trajectory = []
  for g in grads:
    u, new_state = update(g, state, params)
    params = optax.apply_updates(params, u)
    trajectory.append((u, params, state, new_state))
    state = new_state
  return trajectory, state


def _without_skipped(state):
  def strip(s):
    if isinstance(s, adam_jax.ScaleByAdamSkipState):
      return optax.ScaleByAdamState(s.count, s.mu, s.nu)
    if isinstance(s, adam_jax.ScaleByAmsgradSkipState):
      return optax.ScaleByAmsgradState(s.count, s.mu, s.nu, s.nu_max)
    return s

  is_adam = lambda x: isinstance(x, SKIP_STATES)  # noqa: E731
  return jax.tree.map(strip, state, is_leaf=is_adam)


def _adam_state(state):
  return state if isinstance(state, ADAM_STATES) else state[0]


SKIP_STATES = (adam_jax.ScaleByAdamSkipState, adam_jax.ScaleByAmsgradSkipState)
ADAM_STATES = (*SKIP_STATES, optax.ScaleByAdamState, optax.ScaleByAmsgradState)


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
@pytest.mark.parametrize(
  "make,dtype", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_skipped_steps_change_nothing(make, dtype, jit):
  params = _params(dtype)
  grads, bad = _grads(params, 9, seed=0)
  with optax_mode():  # optax's schedules are not written for strict promotion
    guarded, state = _run(make(True), params, grads, jit)
    clean = [g for t, g in enumerate(grads) if t not in bad]
    reference, ref_state = _run(make(False), params, clean, jit)
  it = iter(reference)
  p_before = params
  for t, (u, p, before, after) in enumerate(guarded):
    skipped = int(_adam_state(after).skipped) - int(_adam_state(before).skipped)
    if t in bad:
      assert skipped == 1
      # Exactly zero, in the gradient's dtype; nothing else in the state moves.
      assert_trees_equal(u, jax.tree.map(jnp.zeros_like, params))
      assert_trees_equal(p, p_before)
      assert_trees_equal(_without_skipped(after), _without_skipped(before))
    else:
      assert skipped == 0
      u_ref, p_ref, _, _ = next(it)
      assert max_relative_difference(u, u_ref) <= 1e-6
      assert max_relative_difference(p, p_ref) <= 1e-6
    p_before = p
  assert int(_adam_state(state).skipped) == len(bad)
  assert int(_adam_state(state).count) == int(_adam_state(ref_state).count)
  assert int(_adam_state(ref_state).count) == len(clean)
  assert jax.tree.structure(_without_skipped(state)) == jax.tree.structure(ref_state)


def test_without_the_guard_a_nan_gradient_gives_nan_updates():
  tx = adam_jax.adam(0.1)
  params = _params(jnp.float32)
  g = jax.tree.map(jnp.ones_like, params)
  g["w"] = g["w"].at[0, 0].set(jnp.inf)
  u, _ = tx.update(g, tx.init(params))
  assert bool(jnp.isnan(u["w"][0, 0]))  # never a plausible-looking finite step
  assert bool(jnp.all(jnp.isfinite(u["b"])))


def test_no_host_synchronization():
  """The skip decision stays on the device: no device-to-host transfer."""
  tx = adam_jax.adamw(0.1, skip_nonfinite=True, average_decay=0.9)
  params = _params(jnp.float32)
  state = tx.init(params)
  g = jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), params)
  step = jax.jit(tx.update)
  step(g, state, params)  # compile outside the guard
  with jax.transfer_guard_device_to_host("disallow"):
    _, state = step(g, state, params)
    _, state = tx.update(g, state, params)  # eager too
  assert int(state[0].skipped) == 2


def test_same_trajectory_as_optax_apply_if_finite():
  """optax.apply_if_finite(adam) with an unlimited error budget skips the same
  steps; adam_jax's guard is inside the transformation (zero update, no extra
  state wrapper) and never lets a non-finite step through."""
  params = _params(jnp.float32)
  grads, bad = _grads(params, 9, seed=1)
  with optax_mode():
    ours, _ = _run(adam_jax.adam(0.05, skip_nonfinite=True), params, grads)
    ref, ref_state = _run(optax.apply_if_finite(optax.adam(0.05), 10**6), params, grads)
  for (_, p, *_), (_, p_ref, *_) in zip(ours, ref, strict=True):
    np.testing.assert_allclose(p["w"], p_ref["w"], rtol=2e-6, atol=1e-7)
  assert int(ref_state.total_notfinite) == len(bad)
  # With optax's default budget, consecutive bad steps are eventually applied.
  with optax_mode():
    leaky, _ = _run(optax.apply_if_finite(optax.adam(0.05), 1), params, grads)
  assert not bool(jnp.all(jnp.isfinite(leaky[-1][1]["w"])))
  assert bool(jnp.all(jnp.isfinite(ours[-1][1]["w"])))


def test_composes_with_multisteps():
  """MultiSteps(k=2): a bad micro-batch poisons its accumulated step, which is
  skipped whole; the next window starts clean."""
  params = _params(jnp.float32)
  grads, _ = _grads(params, 8, seed=2)  # bad at micro-steps 2, 5, 6: windows 1, 2, 3
  inner = adam_jax.adam(0.05, skip_nonfinite=True)
  multi = optax.MultiSteps(inner, every_k_schedule=2)
  with optax_mode():
    trajectory, state = _run(multi, params, grads)
    # Reference: plain adam on the average of each clean window (window 0 only).
    ref_tx = adam_jax.adam(0.05)
    mean = jax.tree.map(lambda a, b: (a + b) / 2, grads[0], grads[1])
    u_ref, _ = ref_tx.update(mean, ref_tx.init(params))
  p_after_window0 = trajectory[1][1]
  assert_trees_equal(p_after_window0, optax.apply_updates(params, u_ref))
  for t in range(2, 8):  # every later window held a bad micro-batch
    assert_trees_equal(trajectory[t][1], p_after_window0)
  assert int(state.inner_opt_state[0].skipped) == 3
  assert int(state.inner_opt_state[0].count) == 1


def test_state_is_stable_under_lax_cond_and_scan():
  tx = adam_jax.adamw(0.05, mu_dtype=jnp.bfloat16, skip_nonfinite=True)
  params = _params(jnp.bfloat16)
  grads, bad = _grads(params, 9, seed=3)
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *grads)

  def body(carry, g):
    p, s = carry
    u, s = jax.lax.cond(
      jnp.all(jnp.isfinite(g["b"])),
      lambda: tx.update(g, s, p),
      lambda: tx.update(g, s, p),
    )
    return (optax.apply_updates(p, u), s), None

  (_, state), _ = jax.jit(lambda c, xs: jax.lax.scan(body, c, xs))(
    (params, tx.init(params)), stacked
  )
  assert int(state[0].skipped) == len(bad)


SHARDED = textwrap.dedent(
  """
  import jax, jax.numpy as jnp, numpy as np, optax
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  import adam_jax

  mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
  spec = {"w": P("data", "model"), "b": P("model")}
  shard = lambda tree: jax.tree.map(
    lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), tree, spec)
  params = shard({"w": jnp.ones((8, 4)), "b": jnp.ones(4)})
  tx = adam_jax.adamw(0.1, skip_nonfinite=True, mu_dtype=jnp.bfloat16)
  state = jax.jit(tx.init)(params)
  step = jax.jit(tx.update, donate_argnums=1)
  hlo = step.lower(params, state, params).compile().as_text()
  assert "all-gather" not in hlo, "the guard gathered a sharded array"
  good = shard({"w": jnp.ones((8, 4)), "b": jnp.ones(4)})
  bad = shard({"w": jnp.ones((8, 4)).at[7, 3].set(jnp.nan), "b": jnp.ones(4)})
  u, state = step(good, state, params)
  mu = jax.tree.map(lambda x: np.asarray(x), state[0].mu)
  u, state = step(bad, state, params)
  assert int(state[0].skipped) == 1 and int(state[0].count) == 1
  assert all(np.array_equal(a, np.asarray(b)) for a, b in
             zip(jax.tree.leaves(mu), jax.tree.leaves(state[0].mu)))
  assert float(jnp.max(jnp.abs(u["w"]))) == 0.0
  for leaf, p in zip(jax.tree.leaves(state[0].mu), jax.tree.leaves(params)):
    assert leaf.sharding.is_equivalent_to(p.sharding, p.ndim), (leaf.sharding, p.sharding)
  assert u["w"].sharding.is_equivalent_to(params["w"].sharding, 2)
  print("ok")
  """
)


def test_guard_on_sharded_parameters_without_gathers():
  result = run_python("-c", SHARDED, devices=8)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().endswith("ok")
