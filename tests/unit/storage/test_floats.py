"""``adam_jax._src.storage.floats``: the dtype matrix. Moments are computed in at
least float32 and stored in their storage dtype, which never drifts; updates
come back in the gradient's dtype."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adam_jax

PARAM_DTYPES = ["float16", "bfloat16", "float32", "float64", "complex64"]
STORAGE = [None, "float32", "bfloat16"]
OPTIMIZERS = ["adam", "adamw", "nadam", "amsgrad", "adamax"]


def _make(name, mu_dtype, nu_dtype):
  if name in ("adam", "adamw", "nadam"):
    return getattr(adam_jax, name)(1e-2, mu_dtype=mu_dtype, nu_dtype=nu_dtype)
  if name == "amsgrad":
    return adam_jax.amsgrad(1e-2, mu_dtype=mu_dtype)
  return adam_jax.adamax(1e-2)


def _params(dtype):
  x = jnp.linspace(-2.0, 2.0, 6).reshape(2, 3)
  if dtype == "complex64":
    z = x.astype(dtype) + x[::-1].astype(dtype) * jnp.asarray(1j, dtype)
    return {"w": z, "s": jnp.asarray(1.0 + 2j, dtype)}
  return {"w": x.astype(dtype), "s": jnp.asarray(1.0, dtype)}


CASES = [
  (p, mu, nu, name)
  for p, mu, nu, name in itertools.product(PARAM_DTYPES, STORAGE, STORAGE, OPTIMIZERS)
  if not (name in ("amsgrad", "adamax") and nu is not None)
  and not (name == "adamax" and mu is not None)
  and not (p == "complex64" and mu is not None)
  # adamw and nadam store their moments as adam does: default storage only.
  and not (name in ("adamw", "nadam") and (mu, nu) != (None, None))
]


@pytest.mark.parametrize("param_dtype,mu_dtype,nu_dtype,name", CASES)
def test_state_dtypes_are_stable_through_lax_cond(
  param_dtype, mu_dtype, nu_dtype, name, request
):
  if param_dtype == "float64":
    request.getfixturevalue("x64")
  params = _params(param_dtype)
  tx = _make(name, mu_dtype, nu_dtype)
  state0 = tx.init(params)

  @jax.jit
  @chex.assert_max_traces(n=1)  # the state's dtypes do not drift: no retrace
  def step(pred, state, params):
    g = jax.tree.map(lambda p: p * p.dtype.type(0.5) + p.dtype.type(0.25), params)
    return jax.lax.cond(
      pred,
      lambda: tx.update(g, state, params),
      lambda: (jax.tree.map(jnp.zeros_like, g), state),
    )

  state = state0
  for pred in (True, True, False, True):
    updates, state = step(pred, state, params)
  chex.assert_trees_all_equal_shapes_and_dtypes(state, state0)
  chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)
  chex.assert_tree_all_finite(updates)
  for u in jax.tree.leaves(updates):
    assert bool(jnp.any(u != 0))
  mu = jax.tree.leaves(state[0].mu)[0]
  nu = jax.tree.leaves(state[0].nu)[0]
  chex.assert_type(mu, jnp.dtype(mu_dtype or param_dtype))
  real = jnp.finfo(jnp.dtype(param_dtype)).dtype
  chex.assert_type(nu, jnp.dtype(nu_dtype or real))
  assert int(state[0].count) == 3


def test_mixed_dtype_tree():
  params = {
    "h": jnp.ones(4, jnp.float16),
    "b": jnp.ones(4, jnp.bfloat16),
    "f": jnp.ones(4, jnp.float32),
  }
  tx = adam_jax.adamw(1e-2, mu_dtype=jnp.float32, nu_dtype=jnp.float32)
  g = jax.tree.map(lambda p: p * p.dtype.type(0.1), params)
  updates, state = jax.jit(tx.update)(g, tx.init(params), params)
  assert {k: u.dtype for k, u in updates.items()} == {
    k: p.dtype for k, p in params.items()
  }
  for u in updates.values():
    np.testing.assert_allclose(np.asarray(u, np.float32), -1e-2, rtol=1e-2)
  assert all(m.dtype == jnp.float32 for m in jax.tree.leaves(state[0].mu))


def test_gradient_dtype_wins_over_parameter_dtype():
  """bf16 gradients for f32 parameters give bf16 updates, as the gradient."""
  params = jnp.ones(3, jnp.float32)
  tx = adam_jax.adamw(1e-2)
  updates, _ = tx.update(jnp.ones(3, jnp.bfloat16), tx.init(params), params)
  assert updates.dtype == jnp.bfloat16
