"""Property-based checks (hypothesis) over valid hyperparameters and gradients."""

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import jax.numpy as jnp
import numpy as np
import optax

import adam_jax
from tests._trees import max_relative_difference
from tests.conftest import optax_mode

decay = st.floats(0.0, 0.9999)
small = st.floats(0.0, 1e-3)


@settings(max_examples=40, deadline=None)
@given(
  b1=decay,
  b2=decay,
  eps=st.floats(1e-12, 1e-3),
  eps_root=small,
  nesterov=st.booleans(),
  seed=st.integers(0, 2**16),
)
def test_any_valid_hyperparameters_match_optax(b1, b2, eps, eps_root, nesterov, seed):
  rng = np.random.RandomState(seed)
  params = jnp.asarray(rng.randn(7), jnp.float32)
  kwargs = dict(b1=b1, b2=b2, eps=eps, eps_root=eps_root, nesterov=nesterov)
  ours, ref = adam_jax.adam(1e-2, **kwargs), optax.adam(1e-2, **kwargs)
  s_ours, s_ref = ours.init(params), ref.init(params)
  for _ in range(6):
    g = jnp.asarray(rng.randn(7) * 10.0 ** rng.uniform(-3, 2), jnp.float32)
    u_ours, s_ours = ours.update(g, s_ours, params)
    with optax_mode():
      u_ref, s_ref = ref.update(g, s_ref, params)
    assert bool(jnp.all(jnp.isfinite(u_ours)))
    assert max_relative_difference(u_ours, u_ref) <= 1e-5


def _step_bound(t: int, b1: float, b2: float) -> float:
  """A rigorous bound on |m_hat_t| / sqrt(v_hat_t) (Cauchy-Schwarz).

  m_t = (1-b1) sum_k b1^k g_{t-k} and v_t = (1-b2) sum_k b2^k g_{t-k}^2, so
  |sum_k b1^k g| <= sqrt(sum_k (b1^2/b2)^k) * sqrt(sum_k b2^k g^2), giving
  |m_hat|/sqrt(v_hat) <= (1-b1)/(1-b1^t) * sqrt(sum_{k<t} (b1^2/b2)^k)
                         * sqrt((1-b2^t)/(1-b2)).
  """
  geometric = sum((b1 * b1 / b2) ** k for k in range(t))
  return (1 - b1) / (1 - b1**t) * np.sqrt(geometric * (1 - b2**t) / (1 - b2))


@settings(max_examples=40, deadline=None)
@given(
  scale=st.floats(1e-30, 1e18),
  b1=st.floats(0.0, 0.99),
  b2=st.floats(0.5, 0.9999),
  seed=st.integers(0, 2**16),
)
def test_updates_are_finite_and_within_the_step_bound(scale, b1, b2, seed):
  """|u_t| <= lr * bound_t for finite gradients whose squares are finite."""
  rng = np.random.RandomState(seed)
  lr = 1e-3
  tx = adam_jax.adam(lr, b1=b1, b2=b2)
  params = jnp.zeros(5, jnp.float32)
  state = tx.init(params)
  for t in range(1, 9):
    g = rng.randn(5) * scale * (rng.rand() < 0.8)
    u, state = tx.update(jnp.asarray(g, jnp.float32), state, params)
    assert bool(jnp.all(jnp.isfinite(u)))
    # float32 rounds b2 and 1 - b2**t: relative error up to ~t 2^-24 / (1 - b2^t)
    # in v_hat (1.5e-4 at t = 2, b2 = 0.9999), half of it in the update.
    slack = 1e-5 + 4 * t * 2.0**-24 / (1 - b2**t)
    bound = lr * _step_bound(t, b1, b2) * (1 + slack)
    assert float(jnp.max(jnp.abs(u))) <= bound, (t, bound)
  assert bool(jnp.all(state[0].nu >= 0))
