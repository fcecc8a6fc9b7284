"""``adam_jax._src.alias``: the Adam-family options, their exact meaning, and
life inside optax wrappers.

Numbers against PyTorch/Keras are in ``tests/suites/test_parity.py`` and
against the float64 paper transcription in
``tests/suites/test_paper_options.py``; this file checks
identities that pin each option down, and that every option survives
``jit``, ``inject_hyperparams`` (traced values), ``MultiSteps`` and
low-precision parameters.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from tests._trees import max_relative_difference
from tests.conftest import optax_mode


def _params(dtype=jnp.float32):
  return {
    "dense": {"kernel": jnp.linspace(-1.0, 1.0, 12, dtype=dtype).reshape(3, 4)},
    "bias": jnp.full((4,), 0.5, dtype),
    "norm": {"scale": jnp.ones((4,), dtype)},
  }


def _grads(params, t):
  return jax.tree.map(
    lambda p: (
      jnp.sin(jnp.arange(p.size, dtype=jnp.float32) + t).reshape(p.shape)
    ).astype(p.dtype),
    params,
  )


def _run(tx, params, steps=12, jit=True):
  state = tx.init(params)
  update = jax.jit(tx.update) if jit else tx.update
  for t in range(steps):
    updates, state = update(_grads(params, t), state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def test_maximize_is_descent_on_the_negated_gradient_bitwise():
  params = _params()
  up, _ = _run(adam_jax.adam(1e-2, maximize=True, amsgrad=True), params)
  tx = optax.chain(optax.scale(-1.0), adam_jax.adam(1e-2, amsgrad=True))
  down, _ = _run(tx, params)
  assert max_relative_difference(up, down) == 0.0


def test_coupled_weight_decay_is_l2_in_the_gradient():
  """adam(weight_decay=l) on g == adam on g + l * params (PyTorch's Adam)."""
  params = _params()
  ours, _ = _run(adam_jax.adam(1e-2, weight_decay=0.3), params)
  l2 = optax.chain(optax.add_decayed_weights(0.3), adam_jax.adam(1e-2))
  with optax_mode():
    ref, _ = _run(l2, params)
  assert max_relative_difference(ours, ref) <= 1e-6


MASKS = {
  "tree": {"dense": {"kernel": True}, "bias": False, "norm": {"scale": False}},
  "prefix": {"dense": True, "bias": False, "norm": False},
  "callable": lambda p: jax.tree.map(lambda x: x.ndim > 1, p),
}


@pytest.mark.parametrize("form", sorted(MASKS))
@pytest.mark.parametrize("maker", ["adam", "adamw", "adamw-decouple_lr", "adamax"])
def test_mask_forms_decay_only_the_kernel(form, maker):
  params = _params()
  kwargs = {"decouple_lr": True} if maker == "adamw-decouple_lr" else {}
  make = getattr(adam_jax, maker.split("-")[0])
  masked, _ = _run(make(1e-2, weight_decay=0.2, mask=MASKS[form], **kwargs), params)
  decay_all, _ = _run(make(1e-2, weight_decay=0.2, **kwargs), params)
  no_decay, _ = _run(make(1e-2, weight_decay=0.0, **kwargs), params)
  assert max_relative_difference(masked["dense"], decay_all["dense"]) == 0.0
  assert max_relative_difference(masked["bias"], no_decay["bias"]) == 0.0
  assert max_relative_difference(masked["norm"], no_decay["norm"]) == 0.0
  assert max_relative_difference(decay_all["bias"], no_decay["bias"]) > 1e-4


def test_decouple_lr_decay_ignores_the_learning_rate_schedule():
  """u = -lr_t * adam - wd * p: with zero gradients only the decay acts."""
  params = {"w": jnp.full((3,), 2.0)}
  zero = {"w": jnp.zeros(3)}
  lr = optax.linear_schedule(1.0, 0.0, 4)
  for decouple_lr, expected in ((True, -0.1 * 2.0), (False, -1.0 * 0.1 * 2.0)):
    tx = adam_jax.adamw(lr, weight_decay=0.1, decouple_lr=decouple_lr)
    with optax_mode():  # optax's schedule is not strict-promotion clean
      updates, _ = tx.update(zero, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], expected, rtol=1e-7)


def test_weight_decay_schedule_sees_the_pre_increment_count():
  params = {"w": jnp.ones(2)}
  zero = {"w": jnp.zeros(2)}
  seen = []
  tx = adam_jax.adamw(1.0, weight_decay=lambda count: (seen.append(count), 0.1)[1])
  state = tx.init(params)
  for _ in range(2):
    _, state = tx.update(zero, state, params)
  assert [int(c) for c in seen] == [0, 1]
  coupled = adam_jax.adam(
    1.0, weight_decay=lambda count: 0.1 * (count + 1).astype(jnp.float32)
  )
  state = coupled.init(params)
  for _ in range(2):
    _, state = coupled.update(zero, state, params)
  # m_2 = 0.9 * (0.1 * 0.1) + 0.1 * 0.2 (decay 0.1 at count 0, 0.2 at count 1)
  np.testing.assert_allclose(state[0].mu["w"], 0.9 * 0.01 + 0.02, rtol=1e-6)


def test_bias_correction_false_first_step():
  """t = 1: u = (1 - b1) g / (sqrt((1 - b2) g^2) + eps), no corrections."""
  g = jnp.array([0.5, -2.0])
  tx = adam_jax.scale_by_adam(b1=0.9, b2=0.99, eps=1e-3, bias_correction=False)
  updates, _ = tx.update(g, tx.init(jnp.zeros(2)))
  expected = 0.1 * g / (jnp.sqrt(0.01 * g * g) + 1e-3)
  np.testing.assert_allclose(updates, expected, rtol=1e-6)


def test_amsgrad_option_differs_from_the_amsgrad_alias_as_documented():
  """t = 2 after a large then a small gradient: PyTorch's raw maximum keeps
  v_1 = 0.001 * 10^2 and corrects with 1 - b2^2; optax's keeps v_1 / (1 - b2)."""
  g1, g2 = jnp.array([10.0]), jnp.array([0.1])
  raw = adam_jax.scale_by_adam(amsgrad=True, eps=0.0)
  alias = optax.chain(adam_jax.amsgrad(learning_rate=1.0, eps=0.0), optax.scale(-1.0))
  s_raw, s_alias = raw.init(g1), alias.init(g1)
  _, s_raw = raw.update(g1, s_raw)
  _, s_alias = alias.update(g1, s_alias)
  u_raw, s_raw = raw.update(g2, s_raw)
  u_alias, s_alias = alias.update(g2, s_alias)
  b1, b2 = 0.9, 0.999
  m_hat = (b1 * 0.1 * 10.0 + 0.1 * 0.1) / (1 - b1**2)
  np.testing.assert_allclose(s_raw.nu_max, [0.1], rtol=1e-5)  # raw v_1 = 0.001 * 100
  np.testing.assert_allclose(u_raw, [m_hat / np.sqrt(0.1 / (1 - b2**2))], rtol=1e-4)
  np.testing.assert_allclose(u_alias, [m_hat / 10.0], rtol=1e-4)


def test_state_structure_grows_only_with_the_options():
  params = _params()

  def paths(state):
    return [
      jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state)
    ]

  assert paths(adam_jax.adam().init(params)) == paths(optax.adam(1e-3).init(params))
  state = adam_jax.adam(amsgrad=True, weight_decay=0.1).init(params)
  assert jax.tree.structure(state[0].nu_max) == jax.tree.structure(params)
  assert len(state) == 2  # coupled decay lives inside scale_by_adam
  state = adamw_state = adam_jax.adamw(average_decay=0.9).init(params)
  assert isinstance(state[-1], adam_jax.ParamAverageState)
  assert len(adamw_state) == 4


def test_inject_hyperparams_traces_every_numeric_option_without_recompiling():
  params = _params()
  make = optax.inject_hyperparams(adam_jax.adamw, static_args=("mask",))
  tx = make(
    learning_rate=1e-2,
    weight_decay=0.1,
    average_decay=0.9,
    amsgrad=True,
    eps_hat=True,
    mask=MASKS["prefix"],
  )
  constant = adam_jax.adamw(
    1e-2,
    weight_decay=0.1,
    average_decay=0.9,
    amsgrad=True,
    eps_hat=True,
    mask=MASKS["prefix"],
  )
  step = jax.jit(chex.assert_max_traces(tx.update, n=1))
  p_inj, s_inj = params, tx.init(params)
  p_const, s_const = params, constant.init(params)
  for t in range(5):
    u, s_inj = step(_grads(params, t), s_inj, p_inj)
    p_inj = optax.apply_updates(p_inj, u)
    u, s_const = constant.update(_grads(params, t), s_const, p_const)
    p_const = optax.apply_updates(p_const, u)
  assert max_relative_difference(p_inj, p_const) <= 1e-6
  avg_inj, avg_const = (adam_jax.averaged_params(s) for s in (s_inj, s_const))
  assert max_relative_difference(avg_inj, avg_const) <= 1e-6
  # A new value of a traced hyperparameter: same compiled step, new numbers.
  s_inj.hyperparams["weight_decay"] = jnp.full_like(
    s_inj.hyperparams["weight_decay"], 0.5
  )
  step(_grads(params, 0), s_inj, p_inj)  # raises if traced again


def test_multisteps_averages_only_real_steps():
  params = {"w": jnp.zeros(3)}
  tx = optax.MultiSteps(adam_jax.adam(0.1, average_decay=0.5), every_k_schedule=2)
  state = tx.init(params)
  step = jax.jit(tx.update)
  thetas, averages = [], []
  for t in range(4):
    with optax_mode():  # MultiSteps's own averaging is not strict-clean
      updates, state = step({"w": jnp.full(3, -1.0 - t)}, state, params)
    params = optax.apply_updates(params, updates)
    thetas.append(float(params["w"][0]))
    averages.append(float(adam_jax.averaged_params(state)["w"][0]))
  # Inner steps at t = 1 and 3 only; the first is a sign step of size 0.1.
  assert thetas[0] == 0.0 and thetas[1] == thetas[2] != thetas[3]
  np.testing.assert_allclose(thetas[1], 0.1, rtol=1e-5)
  expected = (0.5 * 0.5 * thetas[1] + 0.5 * thetas[3]) / (1 - 0.5**2)
  np.testing.assert_allclose(averages, [0.0, thetas[1], thetas[1], expected], rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_params_with_every_option(dtype):
  params = _params(dtype)
  tx = adam_jax.adamw(
    1e-2,
    weight_decay=0.1,
    amsgrad=True,
    maximize=True,
    eps_hat=True,
    bias_correction=False,
    average_decay=0.99,
  )
  out, state = _run(tx, params)
  chex.assert_type(jax.tree.leaves(out), dtype)
  chex.assert_tree_all_finite(out)
  average = adam_jax.averaged_params(state)
  for leaf in jax.tree.leaves(average):
    assert leaf.dtype == jnp.float32  # a bf16 average would stall at b = 0.99
  # Zero gradients with eps = 0 stay finite (no 0/0) under every switch.
  zero = jax.tree.map(jnp.zeros_like, params)
  tx0 = adam_jax.adam(1e-2, eps=0.0, amsgrad=True, eps_hat=True, maximize=True)
  updates, _ = tx0.update(zero, tx0.init(params), params)
  assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("maker", ["adam", "adamax", "scale_by_adam"])
def test_inject_hyperparams_with_defaults_needs_no_params(maker):
  """The default weight_decay=None stays static: no params needed, as in optax."""
  kwargs = {} if maker == "scale_by_adam" else {"learning_rate": 0.1}
  tx = optax.inject_hyperparams(getattr(adam_jax, maker))(**kwargs)
  params = _params()
  updates, _ = jax.jit(tx.update)(_grads(params, 0), tx.init(params))
  chex.assert_tree_all_finite(updates)


# param_rounding="kahan" ------------------------------------------------------


def _bf16_runs(steps=200):
  rng = np.random.default_rng(4)
  # Parameters around 1 take bf16 steps of 2**-8: an update of 1e-3 rounds away.
  p0 = jnp.asarray(1 + 0.1 * rng.standard_normal(4096), jnp.float32)
  g = [jnp.asarray(rng.standard_normal(4096) + 0.3, jnp.bfloat16) for _ in range(16)]
  runs = {}
  for name, dtype, rounding in (
    ("master", jnp.float32, None),
    ("plain", jnp.bfloat16, None),
    ("kahan", jnp.bfloat16, "kahan"),
  ):
    tx = adam_jax.adam(1e-3, param_rounding=rounding)
    p, s = p0.astype(dtype), None
    s = tx.init(p)
    step = jax.jit(tx.update)
    for k in range(steps):
      u, s = step(g[k % 16].astype(dtype), s, p)  # exact: bf16 -> float32
      p = optax.apply_updates(p, u)
    runs[name] = np.asarray(p, np.float64)
  return runs


def test_kahan_bf16_tracks_float32_master_weights():
  runs = _bf16_runs()
  master = runs["master"]
  ulp = 2.0**-7 * 2.0 ** np.floor(np.log2(np.abs(master)))  # bf16 spacing
  kahan_err = np.abs(runs["kahan"] - master)
  plain_err = np.abs(runs["plain"] - master)
  # Compensated: within 2 bf16 ulps of the float32 master weight (measured:
  # 1.54 at most; the bf16 updates and bf16 compensation each round).
  assert np.all(kahan_err <= 2 * ulp), (kahan_err / ulp).max()
  # Plain bf16 updates lose the small steps: far off.
  assert np.mean(plain_err) > 10 * np.mean(kahan_err)


def test_kahan_state_and_errors():
  params = {"h": jnp.ones(4, jnp.bfloat16), "f": jnp.ones(4, jnp.float32)}
  tx = adam_jax.adamw(param_rounding="kahan")
  state = tx.init(params)
  lone = adam_jax.adam(param_rounding="kahan")
  assert state[-1].compensation["h"].dtype == jnp.bfloat16
  assert state[-1].compensation["f"] is None
  with pytest.raises(ValueError, match="param_rounding='kahan' needs the parameters"):
    lone.update(params, lone.init(params))
  # float32 parameters: exactly the uncompensated optimizer.
  plain = adam_jax.adamw()
  g = {"h": jnp.ones(4, jnp.bfloat16), "f": jnp.full(4, 0.5)}
  u1, _ = tx.update(g, state, params)
  u2, _ = plain.update(g, plain.init(params), params)
  np.testing.assert_array_equal(np.asarray(u1["f"]), np.asarray(u2["f"]))
