"""The modern Adam variants: optax drop-ins, the option maths, combinations.

* ``adopt``, ``ademamix``, ``radam``, ``adamaxw`` and ``schedule_free_adamw``
  against their optax namesakes (optax runs live: it is a dependency), state
  classes included, and an optax-made state stepped here;
* ``cautious``, ``update_clipping`` and ``atan2`` against float64 NumPy
  transcriptions of the papers' formulas;
* every variant with 8-bit moments, with ``skip_nonfinite`` and under
  ``optax.inject_hyperparams``; the variants' own states through Orbax;
* the combinations that are refused, with messages naming both options.

Step-for-step parity over 200 steps with PyTorch implementations and optax
lives in ``tests/suites/test_parity.py``; the guarantees (finite updates at
any magnitude, float16 zero gradients) in ``tests/suites/test_guarantees.py``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest

import adam_jax
from tests._trees import assert_trees_equal
from tests._trees import gradient_steps
from tests._trees import max_relative_difference
from tests._variants import NO_STORAGE
from tests._variants import VARIANTS
from tests.conftest import optax_mode

PARAMS = {
  "w": jnp.asarray(np.random.RandomState(0).randn(3, 4), jnp.float32),
  "b": jnp.asarray([0.5, -1.0, 2.0], jnp.float32),
}
STEPS = 25


def _alpha(count):
  return 5.0 * jnp.asarray(0.99, jnp.float32) ** jnp.asarray(count, jnp.float32)


def _b3(count):
  return 0.9 + 0.001 * jnp.asarray(count, jnp.float32)


DROP_INS = {
  "adopt": (
    lambda: adam_jax.adopt(1e-2),
    lambda: optax.contrib.adopt(1e-2),
  ),
  "adopt-nesterov-noclip": (
    lambda: adam_jax.adopt(1e-2, b2=0.99, nesterov=True, use_clipping=False),
    lambda: optax.contrib.adopt(1e-2, b2=0.99, nesterov=True, use_clipping=False),
  ),
  "ademamix": (
    lambda: adam_jax.ademamix(1e-2, weight_decay=0.1),
    lambda: optax.contrib.ademamix(1e-2, weight_decay=0.1),
  ),
  "ademamix-schedules": (
    lambda: adam_jax.ademamix(1e-2, b3=_b3, alpha=_alpha),
    lambda: optax.contrib.ademamix(1e-2, b3=_b3, alpha=_alpha),
  ),
  "radam": (lambda: adam_jax.radam(1e-2), lambda: optax.radam(1e-2)),
  "radam-nesterov": (
    lambda: adam_jax.radam(1e-2, b2=0.99, threshold=4.5, nesterov=True),
    lambda: optax.radam(1e-2, b2=0.99, threshold=4.5, nesterov=True),
  ),
  "adamaxw": (
    lambda: adam_jax.adamaxw(1e-2, weight_decay=0.1),
    lambda: optax.adamaxw(1e-2, weight_decay=0.1),
  ),
  "schedule_free_adamw": (
    lambda: adam_jax.schedule_free_adamw(1e-2, warmup_steps=5, weight_decay=0.1),
    lambda: optax.contrib.schedule_free_adamw(1e-2, warmup_steps=5, weight_decay=0.1),
  ),
}


def _run(tx, params, grads, state=None, reference=False):
  """Jitted steps of ``tx`` over ``grads``: every step's parameters and the
  last state (optax, the ``reference``, under standard promotion)."""
  state = tx.init(params) if state is None else state

  @jax.jit
  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  out = []
  for g in grads:
    if reference:
      with optax_mode():
        params, state = step(params, state, g)
    else:
      params, state = step(params, state, g)
    out.append(params)
  return out, state


@pytest.mark.parametrize("name", sorted(DROP_INS))
def test_matches_its_optax_namesake(name):
  ours, ref = (make() for make in DROP_INS[name])
  grads = gradient_steps(PARAMS, STEPS, seed=3)
  p_ours, s_ours = _run(ours, PARAMS, grads)
  p_ref, s_ref = _run(ref, PARAMS, grads, reference=True)
  assert jax.tree.structure(s_ours) == jax.tree.structure(s_ref)
  # RAdam's rho_t: optax's float32 powers lose ~1% of r_t near the threshold
  # (adam_jax keeps it to ~1e-4: test_radam_... below); the rest is rounding.
  tolerance = 2e-5 if name.startswith("radam") else 2e-6
  for a, b in zip(p_ours, p_ref, strict=True):
    assert max_relative_difference(a, b) <= tolerance
  # optax's state (its classes, its init) steps here unchanged.
  p_cont, _ = _run(ours, PARAMS, grads, state=ref.init(PARAMS))
  assert max_relative_difference(p_cont[-1], p_ref[-1]) <= tolerance


def _one_step(tx, g, params=None):
  params = jnp.zeros_like(g) if params is None else params
  state = tx.init(params)
  u, state = tx.update(g, state, params)
  return np.asarray(u, np.float64), state


def test_cautious_masks_and_rescales_per_tensor():
  """Liang et al., Algorithm 2 (pytorch-optimizer's ``apply_cautious``): after
  a step that set m, a gradient of mixed sign keeps the agreeing part,
  scaled by n / (#agree + 1)."""
  g1 = jnp.asarray([1.0, 1.0, -1.0, 2.0, 0.5])
  g2 = jnp.asarray([0.5, -0.5, -1.0, 1.0, -0.1])
  ours, plain = adam_jax.adam(1.0, cautious=True), adam_jax.adam(1.0)
  s_ours, s_plain = ours.init(g1), plain.init(g1)
  _, s_ours = ours.update(g1, s_ours)
  _, s_plain = plain.update(g1, s_plain)
  u_ours, _ = ours.update(g2, s_ours)
  u_plain, _ = plain.update(g2, s_plain)
  u_plain = np.asarray(u_plain, np.float64)
  agree = (u_plain * -np.asarray(g2) > 0).astype(np.float64)  # u = -lr * step
  expected = u_plain * agree * g2.size / (agree.sum() + 1)
  np.testing.assert_allclose(np.asarray(u_ours), expected, rtol=1e-6)
  assert 0 < agree.sum() < g2.size  # the case masks something and keeps some


def test_update_clipping_divides_by_the_rms_of_g_over_v_hat():
  """StableAdamW: after steps of size 1, a gradient 10x larger on one
  element gives RMS(g^2 / v_hat) > 1, and the whole tensor's step is divided
  by it (float64 transcription of Wortsman et al., Algorithm 2)."""
  b2, eps = 0.99, 1e-8
  gs = [np.ones(4), np.ones(4), np.array([10.0, 1.0, 1.0, 1.0])]
  ours, plain = (
    adam_jax.adam(1.0, b2=b2, update_clipping=True),
    adam_jax.adam(1.0, b2=b2),
  )
  s_o, s_p = ours.init(jnp.zeros(4)), plain.init(jnp.zeros(4))
  v = np.zeros(4)
  for t, g in enumerate(gs, start=1):
    u_o, s_o = ours.update(jnp.asarray(g, jnp.float32), s_o)
    u_p, s_p = plain.update(jnp.asarray(g, jnp.float32), s_p)
    v = b2 * v + (1 - b2) * g * g
    v_hat = v / (1 - b2**t)
    rms = max(1.0, np.sqrt(np.mean(g * g / np.maximum(v_hat, eps * eps))))
    np.testing.assert_allclose(np.asarray(u_o), np.asarray(u_p) / rms, rtol=1e-6)
  assert rms > 1.1  # the last step was clipped


def test_atan2_is_bounded_and_scale_invariant():
  """a atan2(m_hat, b sqrt(v_hat)): at t = 1 it is a atan(1 / b) sign(g),
  for any gradient scale (no eps), and never beyond a pi / 2."""
  for scale in (1e-15, 1.0, 1e15):  # g^2 within float32's range
    g = jnp.asarray([2.0, -1.0, 0.0]) * scale
    u, _ = _one_step(adam_jax.scale_by_adam(atan2=True, atan2_a=1.5, atan2_b=2.0), g)
    # rtol: float32's 1 - b2 and 1 - b2^t in v_hat.
    np.testing.assert_allclose(u, 1.5 * np.arctan(0.5) * np.sign(g), rtol=2e-5)
  u, _ = _one_step(adam_jax.scale_by_adam(atan2=True, b2=0.5), jnp.asarray([1e30]))
  assert abs(u[0]) <= 1.27 * np.pi / 2


def test_adopt_first_step_only_sets_v_and_reproduces_pytorch_with_a_shifted_clip():
  """optax's clip index (the count before the step) and pytorch-optimizer's
  (the step including the first call) differ by one; clip_value_fn shifts it."""
  g = jnp.asarray([4.0, -0.01])
  tx = adam_jax.adopt(1.0, b1=0.0)
  u, state = _one_step(tx, g)
  assert np.all(u == 0) and np.allclose(state[0].nu, g * g)
  big = jnp.asarray([40.0, -0.01])
  u2, _ = tx.update(big, state)  # normalized [10, -1], clipped at 1**0.25
  np.testing.assert_allclose(np.asarray(u2), [-1.0, 1.0])
  shifted = adam_jax.adopt(
    1.0, b1=0.0, clip_value_fn=lambda c: (c + 1).astype(jnp.float32) ** 0.25
  )
  _, s = shifted.update(g, shifted.init(g))
  u3, _ = shifted.update(big, s)
  np.testing.assert_allclose(np.asarray(u3), [-(2**0.25), 1.0], rtol=1e-6)


def test_radam_takes_the_momentum_step_until_rho_reaches_the_threshold():
  b2 = 0.999
  rho_inf = 2 / (1 - b2) - 1
  tx = adam_jax.radam(1.0, b1=0.0, b2=b2)
  state = tx.init(jnp.zeros(1))
  for t in range(1, 8):
    u, state = tx.update(jnp.asarray([3.0]), state)
    rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
    if rho < 5:
      expected = -3.0  # m_hat, not normalized
    else:
      r = np.sqrt(
        (rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)
      )
      expected = -r
    np.testing.assert_allclose(float(u[0]), expected, rtol=2e-4)
  assert rho > 5  # both branches were taken


BIG = {"k": jnp.ones((64, 64), jnp.float32), "b": jnp.ones(3, jnp.float32)}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_trains_with_8_bit_moments(name):
  """8-bit moments store the large leaf's moments as QuantizedMoment and
  follow the float32 trajectory closely; AdaMaxW has no storage option."""
  if name in NO_STORAGE:
    with pytest.raises(TypeError, match="mu_dtype"):
      adam_jax.adamaxw(1e-2, mu_dtype="int8")  # refused: an unknown argument
    return
  grads = gradient_steps(BIG, 12, seed=5)
  f32 = VARIANTS[name](1e-2)
  q8 = VARIANTS[name](1e-2, mu_dtype="int8", nu_dtype="int8")
  p32, _ = _run(f32, BIG, grads)
  p8, state = _run(q8, BIG, grads)
  stored = [x for x in jax.tree.leaves(state, is_leaf=adam_jax_quantized)]
  assert any(isinstance(x, adam_jax.QuantizedMoment) for x in stored)
  delta = jax.tree.map(lambda a, b: a - b, p32[-1], BIG)
  err = jax.tree.map(lambda a, b: a - b, p8[-1], p32[-1])
  assert max_relative_difference(err, jax.tree.map(jnp.zeros_like, err), delta) <= 0.1


def adam_jax_quantized(x):
  return isinstance(x, adam_jax.QuantizedMoment)


def _coded(x):
  return isinstance(x, (adam_jax.Int4Moment, adam_jax.FactoredMoment))


def _decoded_state(state):
  """``state`` with every coded moment replaced by its float32 decoding: the
  state of the same variant with float32 moments."""
  return jax.tree.map(
    lambda x: x.dequantize() if _coded(x) else x, state, is_leaf=_coded
  )


@pytest.mark.parametrize("storage", ["int4", "int4-factored"])
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_steps_on_4_bit_and_factored_moments(name, storage):
  """With ``mu_dtype="int4"`` (and ``nu_dtype`` "int4" or "factored") the
  large leaf's moments are coded. A 4-bit state steps exactly as the
  float32 variant does from the decoded state (the storage decodes before
  the one rule and encodes after it); a factored ``v`` stores the row and
  column means of the ``v`` the float32 variant computes from the decoded
  state (Adafactor's factored update)."""
  nu = "int4" if storage == "int4" else "factored"
  if name in NO_STORAGE:
    with pytest.raises(TypeError, match="nu_dtype"):
      adam_jax.adamaxw(1e-2, nu_dtype=nu)  # refused: an unknown argument
    return
  grads = gradient_steps(BIG, 6, seed=5)
  coded = VARIANTS[name](1e-2, mu_dtype="int4", nu_dtype=nu)
  plain = VARIANTS[name](1e-2)
  params, state = _run(coded, BIG, grads[:5])
  assert any(_coded(x) for x in jax.tree.leaves(state, is_leaf=_coded))
  u, new = coded.update(grads[5], state, params[-1])
  u_ref, new_ref = plain.update(grads[5], _decoded_state(state), params[-1])
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u))
  nu_new = [x for x in jax.tree.leaves(new, is_leaf=_coded) if _coded(x)]
  if storage == "int4":
    np.testing.assert_allclose(u["k"], u_ref["k"], rtol=2e-5, atol=1e-7)
    assert all(isinstance(x, adam_jax.Int4Moment) for x in nu_new)
    return
  factored = [x for x in nu_new if isinstance(x, adam_jax.FactoredMoment)]
  v_ref = [
    x
    for x in jax.tree.leaves(new_ref)
    if x.shape == (64, 64) and bool(jnp.all(x >= 0)) and bool(jnp.any(x > 0))
  ]
  assert len(factored) == 1 and v_ref, "one factored v, its float32 counterpart"
  # v_ref: the float32 state's non-negative (64, 64) arrays, v among them.
  matches = [
    np.allclose(factored[0].row, np.mean(v, axis=1), rtol=2e-5)
    and np.allclose(factored[0].col, np.mean(v, axis=0), rtol=2e-5)
    for v in v_ref
  ]
  assert any(matches)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_skips_non_finite_steps(name):
  tx = VARIANTS[name](1e-2, skip_nonfinite=True)
  grads = gradient_steps(PARAMS, 4, seed=1)
  params, state = PARAMS, tx.init(PARAMS)
  for g in grads[:3]:
    u, state = tx.update(g, state, params)
    params = optax.apply_updates(params, u)
  bad = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan), grads[3])
  u, new = tx.update(bad, state, params)
  assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(u))
  skipped = [x for x in jax.tree.leaves(new) if x.shape == () and x.dtype == jnp.int32]
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new, state)
  assert sum(jax.tree.leaves(changed)) == 1, changed  # the skipped count only
  assert skipped
  u_plain, _ = VARIANTS[name](1e-2).update(
    bad, VARIANTS[name](1e-2).init(params), params
  )
  assert not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u_plain))


@pytest.mark.parametrize(
  "build,words",
  [
    (lambda: adam_jax.adam(atan2=True, amsgrad=True), ["atan2=True", "amsgrad"]),
    (lambda: adam_jax.adam(atan2=True, eps_hat=True), ["atan2=True", "eps_hat"]),
    (lambda: adam_jax.adamw(update_clipping=True, decouple_lr=True), ["decouple_lr"]),
    (lambda: adam_jax.adam(atan2_a=2.0), ["atan2_a=2.0", "atan2=True"]),
  ],
)
def test_combinations_without_a_meaning_are_refused(build, words):
  with pytest.raises(ValueError) as info:
    build()
  for word in words:
    assert word in str(info.value), str(info.value)


@pytest.mark.parametrize("option", ["cautious", "update_clipping", "atan2"])
def test_complex_parameters_are_refused_by_the_real_only_options(option):
  tx = adam_jax.adam(**{option: True})
  params = jnp.ones(2, jnp.complex64)
  with pytest.raises(TypeError, match=f"{option} is defined for real parameters"):
    tx.update(params, tx.init(params))


def test_stable_adamw_scales_the_decay_with_the_clip():
  """adamw(update_clipping=True): u = -lr (ratio + wd p) / max(1, RMS)."""
  p = jnp.asarray([1.0, 2.0, 3.0, 4.0])
  g1, g2 = jnp.ones(4), jnp.asarray([10.0, 1.0, 1.0, 1.0])
  tx = adam_jax.adamw(0.1, b2=0.99, weight_decay=0.5, update_clipping=True)
  ref = adam_jax.adam(0.1, b2=0.99, update_clipping=True)
  s, r = tx.init(p), ref.init(p)
  _, s = tx.update(g1, s, p)
  _, r = ref.update(g1, r, p)
  u, _ = tx.update(g2, s, p)
  u_ref, _ = ref.update(g2, r, p)
  plain, _ = adam_jax.adam(0.1, b2=0.99).update(g2, r, p)
  scale = float(u_ref[1] / plain[1])
  assert scale < 0.9  # clipped
  np.testing.assert_allclose(
    np.asarray(u), np.asarray(u_ref) - 0.1 * 0.5 * p * scale, rtol=1e-5
  )


@pytest.mark.parametrize(
  "factory,kwargs",
  [
    (adam_jax.adopt, {}),
    (adam_jax.ademamix, dict(b3=0.999, alpha=2.0)),
    (adam_jax.radam, dict(threshold=4.0)),
    (adam_jax.adamaxw, {}),
    (adam_jax.schedule_free_adamw, {}),
    (adam_jax.adamw, dict(atan2=True, atan2_a=1.0)),
    (adam_jax.adam, dict(update_clipping=True, cautious=True)),
  ],
  ids=lambda x: getattr(x, "__name__", ""),
)
def test_every_variant_takes_inject_hyperparams(factory, kwargs):
  """Numbers become traced arrays (ADOPT's clip function, which
  inject_hyperparams evaluates at the count, arrives as its value) and the
  jitted steps match the plain optimizer's to float32 rounding."""
  injected = optax.inject_hyperparams(factory)(learning_rate=0.1, **kwargs)
  grads = gradient_steps(PARAMS, 4, seed=2)
  p_inj, _ = _run(injected, PARAMS, grads)
  p_ref, _ = _run(factory(0.1, **kwargs), PARAMS, grads)
  assert max_relative_difference(p_inj[-1], p_ref[-1]) <= 1e-5


@pytest.mark.parametrize("name", ["ademamix", "schedule-free-adamw", "adopt-cautious"])
def test_orbax_round_trip_resumes_bit_identically(tmp_path, name):
  """The variants' own states (AdEMAMix's slow moment, schedule-free's
  wrapper, 8-bit moments) saved with Orbax, restored into ``eval_shape(init)``'s
  structure, and resumed bit for bit."""
  ocp = pytest.importorskip("orbax.checkpoint")
  tx = VARIANTS[name](1e-2, mu_dtype="int8", nu_dtype="int8", skip_nonfinite=True)
  grads = gradient_steps(BIG, 4, seed=4)

  @jax.jit
  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  p, s = BIG, tx.init(BIG)
  for g in grads[:2]:
    p, s = step(p, s, g)
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(tmp_path / "ckpt", s)
  with ocp.StandardCheckpointer() as ckpt:
    restored = ckpt.restore(tmp_path / "ckpt", jax.eval_shape(tx.init, BIG))
  assert jax.tree.structure(restored) == jax.tree.structure(s)
  q, r = p, restored
  for g in grads[2:]:
    p, s = step(p, s, g)
    q, r = step(q, r, g)
  assert_trees_equal((q, r), (p, s))
