"""adam_jax inside every optax wrapper, compared with optax.adam in the same one."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from tests._trees import max_relative_difference
from tests._trees import random_tree
from tests.conftest import optax_mode

TOL = 1e-6


def _params():
  return {
    "dense": {"w": jnp.linspace(-1.0, 1.0, 12).reshape(4, 3), "b": jnp.zeros(3)},
    "scale": jnp.asarray(1.5),
    "frozen": None,
  }


def _grads(params, t):
  return jax.tree.map(lambda p: jnp.sin(p * (t + 1.0) + t) * (t % 4), params)


def _trajectory(tx, params, steps=30, nan_at=()):
  state = tx.init(params)
  step = jax.jit(tx.update)
  out = []
  for t in range(steps):
    g = _grads(params, t)
    if t in nan_at:
      g = jax.tree.map(lambda x: x * jnp.nan, g)
    updates, state = step(g, state, params)
    params = optax.apply_updates(params, updates)
    out.append(params)
  return out, state


def _wrap(name, inner_factory):
  if name == "chain-clip":
    return optax.chain(optax.clip_by_global_norm(0.5), inner_factory(3e-2))
  if name == "multisteps":
    return optax.MultiSteps(inner_factory(3e-2), every_k_schedule=3)
  if name == "apply_if_finite":
    return optax.apply_if_finite(inner_factory(3e-2), max_consecutive_errors=2)
  if name == "masked":
    mask = {"dense": {"w": True, "b": False}, "scale": True, "frozen": None}
    return optax.masked(inner_factory(3e-2), mask)
  if name == "multi_transform":
    labels = {"dense": {"w": "adam", "b": "sgd"}, "scale": "adam", "frozen": None}
    return optax.multi_transform(
      {"adam": inner_factory(3e-2), "sgd": optax.sgd(1e-2)}, labels
    )
  if name == "schedule":
    return inner_factory(optax.exponential_decay(3e-2, 5, 0.5))
  if name == "inject_hyperparams":
    return optax.inject_hyperparams(inner_factory)(learning_rate=3e-2)
  raise ValueError(name)


WRAPPERS = [
  "chain-clip",
  "multisteps",
  "apply_if_finite",
  "masked",
  "multi_transform",
  "schedule",
  "inject_hyperparams",
]


@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_wrapped_like_optax(wrapper):
  params = _params()
  nan_at = (4, 5) if wrapper == "apply_if_finite" else ()
  with optax_mode():
    ref, _ = _trajectory(_wrap(wrapper, optax.adam), params, nan_at=nan_at)
    # schedules/inject are optax code that is not strict-promotion clean
    ours, _ = _trajectory(_wrap(wrapper, adam_jax.adam), params, nan_at=nan_at)
  for t, (a, b) in enumerate(zip(ours, ref, strict=True)):
    assert max_relative_difference(a, b) <= TOL, (wrapper, t)
  assert max_relative_difference(ours[-1], params) > 1e-2  # it did train
  assert jax.tree.structure(ours[-1]) == jax.tree.structure(params)


def test_apply_if_finite_skips_nan_steps():
  params = _params()
  tx = optax.apply_if_finite(adam_jax.adam(3e-2), max_consecutive_errors=5)
  state = tx.init(params)
  bad = jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), params)
  updates, state = jax.jit(tx.update)(bad, state, params)
  assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates))
  assert int(state.notfinite_count) == 1
  assert int(state.inner_state[0].count) == 0


def test_inject_hyperparams_changes_learning_rate_without_recompiling():
  params = _params()
  tx = optax.inject_hyperparams(adam_jax.adam)(learning_rate=1e-2)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, state):
    updates, state = tx.update(_grads(params, 1.0), state, params)
    return optax.apply_updates(params, updates), state, updates

  state = tx.init(params)
  _, state, u1 = step(params, state)
  state.hyperparams["learning_rate"] = jnp.asarray(1e-3, jnp.float32)
  _, state, u2 = step(params, state)  # no second trace
  ratio = u2["dense"]["w"] / u1["dense"]["w"]
  assert bool(jnp.all(ratio < 0.2))  # the new learning rate took effect


def test_inject_hyperparams_traced_betas_match_constants():
  params = random_tree(2)
  g = jax.tree.map(jnp.cos, params)
  injected = optax.inject_hyperparams(adam_jax.adamw)(
    learning_rate=1e-2, b1=0.8, b2=0.99, eps=1e-6, weight_decay=1e-2
  )
  plain = adam_jax.adamw(1e-2, b1=0.8, b2=0.99, eps=1e-6, weight_decay=1e-2)
  s1, s2 = injected.init(params), plain.init(params)
  for _ in range(5):
    with optax_mode():
      u1, s1 = jax.jit(injected.update)(g, s1, params)
    u2, s2 = jax.jit(plain.update)(g, s2, params)
  assert max_relative_difference(u1, u2) <= TOL


def test_tree_map_params_sees_every_moment():
  """optax.tree.map_params inits with a placeholder that has no leaves."""
  params = _params()
  for tx in (adam_jax.adamw(1e-3), adam_jax.amsgrad(1e-3)):
    state = tx.init(params)
    shapes = optax.tree.map_params(
      tx, lambda p: p.shape, state, transform_non_params=lambda _: "other"
    )
    assert shapes[0].mu["dense"]["w"] == (4, 3)
    assert shapes[0].nu["scale"] == ()
    assert shapes[0].count == "other"
    if getattr(shapes[0], "nu_max", None) is not None:
      assert shapes[0].nu_max["dense"]["b"] == (3,)


def test_none_and_scalar_leaves_like_optax():
  params = {"a": None, "s": jnp.asarray(2.0), "t": (None, jnp.ones(2))}
  g = {"a": None, "s": jnp.asarray(0.5), "t": (None, jnp.full(2, -1.0))}
  tx = adam_jax.adamw(1e-2)
  state = tx.init(params)
  updates, state = tx.update(g, state, params)
  assert updates["a"] is None and updates["t"][0] is None
  assert updates["s"].shape == ()
  with optax_mode():
    ref = optax.adamw(1e-2)
    ref_updates, _ = ref.update(g, ref.init(params), params)
  assert max_relative_difference(updates, ref_updates) <= TOL


def test_lax_cond_and_scan_accept_the_state():
  params = _params()
  tx = adam_jax.adam(1e-2, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16)
  state = tx.init(params)

  @jax.jit
  def maybe_step(pred, params, state):
    g = _grads(params, 2.0)
    return jax.lax.cond(
      pred,
      lambda: tx.update(g, state, params),
      lambda: (jax.tree.map(jnp.zeros_like, g), state),
    )

  _, state = maybe_step(True, params, state)
  _, state = maybe_step(False, params, state)
  assert int(state[0].count) == 1
  np.testing.assert_equal(
    [x.dtype for x in jax.tree.leaves(state)],
    [x.dtype for x in jax.tree.leaves(tx.init(params))],
  )
