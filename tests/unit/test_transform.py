"""``adam_jax._src.transform``: ``scale_by_adam``'s step as a JAX computation.

1. ``skip_nonfinite``: a step with a NaN or infinite gradient is skipped,
   losslessly.

   On a bad step the update is exactly zero and the whole optimizer state is
   bitwise what it was, except ``skipped``, which counts such steps. The good
   steps are compared with the same optimizer *without* the guard run on the
   sequence with the bad steps removed: equal to float32 rounding (the select
   changes how XLA fuses the step, which may move a multiply-add by an ulp).
2. ``jax.vmap`` of an update over a batch of independent optimizer states
   equals the per-example updates, stacked.

``jax.export`` of the update is tested in ``test_serialization.py``, the
guard on sharded parameters in ``tests/suites/multidevice``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
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


def test_the_guard_compiles_to_a_program_linear_in_the_leaves():
  """The finiteness flag is read by every state leaf's update; combined as a
  chain of ``and``, XLA copies the chain into each reader and the compiled
  program grows with the square of the number of leaves. Linear growth
  doubles it from 40 to 80 leaves."""

  def compiled_size(n):
    params = {f"l{i:03d}": jnp.ones((300,)) for i in range(n)}
    tx = adam_jax.adam(1e-3, skip_nonfinite=True, pack_small_leaves=False)
    step = jax.jit(tx.update).lower(params, tx.init(params), params)
    return len(step.compile().as_text())

  assert compiled_size(80) / compiled_size(40) < 2.5


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


# jax.vmap over independent states ------------------------------------------

BATCH = 64
VMAP_TXS = {
  "adam": lambda: adam_jax.adam(1e-2),
  "bf16": lambda: adam_jax.adam(1e-2, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16),
  "int8": lambda: adam_jax.adam(1e-2, mu_dtype="int8", nu_dtype="int8"),
  "int4-factored": lambda: adam_jax.adam(1e-2, mu_dtype="int4", nu_dtype="factored"),
  "nadamw-skip": lambda: adam_jax.nadamw(1e-2, weight_decay=0.1, skip_nonfinite=True),
}


@pytest.mark.parametrize("name", sorted(VMAP_TXS))
def test_vmap_over_independent_states_equals_each_step(name):
  tx = VMAP_TXS[name]()
  key_p, key_g = jax.random.split(jax.random.key(3))
  params = {"w": jax.random.normal(key_p, (BATCH, 4096))}
  grads = {
    "w": jax.random.normal(key_g, (BATCH, 4096)) * jnp.logspace(-3, 1, BATCH)[:, None]
  }
  if name.endswith("skip"):  # one example's gradient is not finite: skipped alone
    grads["w"] = grads["w"].at[5, 7].set(jnp.inf)

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  def one(i):
    return jax.tree.map(lambda x: x[i], params), jax.tree.map(lambda x: x[i], grads)

  states = jax.vmap(tx.init)(params)
  batched = jax.jit(jax.vmap(step))
  single = jax.jit(step)
  p_b, s_b = params, states
  p_1 = [one(i)[0] for i in range(BATCH)]
  s_1 = [tx.init(p) for p in p_1]
  for _ in range(3):
    p_b, s_b = batched(p_b, s_b, grads)
    for i in range(BATCH):
      p_1[i], s_1[i] = single(p_1[i], s_1[i], one(i)[1])
  assert_trees_equal(p_b, jax.tree.map(lambda *xs: jnp.stack(xs), *p_1))
  assert_trees_equal(s_b, jax.tree.map(lambda *xs: jnp.stack(xs), *s_1))
  if name.endswith("skip"):
    skipped = s_b[0].skipped
    assert int(skipped[5]) == 3 and int(jnp.sum(skipped)) == 3
