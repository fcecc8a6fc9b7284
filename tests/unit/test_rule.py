"""``adam_jax._src.rule``: the per-array maths, against float64 NumPy.

The Adam step's scalar pieces are checked one by one: the EMA coefficients of
Algorithm 1 (and their limit at ``b = 1``), the geometric sum behind the step
bound, the step bound itself against the Cauchy-Schwarz bound computed from
the moments' weights, and the guards (``0 / 0 = 0``, saturation, ``|g|^2`` of
complex gradients). Whole trajectories against Algorithm 1 are in
``tests/suites/test_paper_reference.py``.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from adam_jax._src import config
from adam_jax._src import rule


def test_ema_coefficients_are_algorithm_1s():
  t = jnp.asarray(7.0)
  keep, rate, correction = rule.ema_coefficients(0.9, t)
  assert (keep, rate) == (0.9, 1 - 0.9)
  np.testing.assert_allclose(float(correction), 1 - 0.9**7, rtol=1e-6)


@pytest.mark.parametrize("t", [1.0, 2.0, 50.0])
def test_ema_coefficients_at_b_equal_1_are_the_running_mean(t):
  """bfloat16(0.999) rounds to 1: the limits keep the moment the running mean."""
  keep, rate, correction = rule.ema_coefficients(jnp.asarray(1.0), jnp.asarray(t))
  np.testing.assert_allclose([float(keep), float(rate)], [1 - 1 / t, 1 / t], rtol=1e-7)
  assert float(correction) == 1.0
  # Running mean of x_1..x_t = 1..t: the mean (t + 1) / 2.
  m = 0.0
  for k in range(1, int(t) + 1):
    keep_k, rate_k, _ = rule.ema_coefficients(jnp.asarray(1.0), jnp.asarray(float(k)))
    m = float(keep_k) * m + float(rate_k) * k
  np.testing.assert_allclose(m, (t + 1) / 2, rtol=1e-6)


@pytest.mark.parametrize(
  "x,y", [(0.81, 0.999), (0.5, 0.5), (0.0, 0.3), (0.0, 0.0), (0.95, 0.9)]
)
@pytest.mark.parametrize("t", [1, 2, 10, 1000])
def test_geometric_sum_matches_the_sum(x, y, t):
  # 0**0 = 1: with x = y = 0 the sum is 1.
  want = 1.0 if x == y == 0 else float(sum((x / y) ** k for k in range(t)))
  got = float(rule.geometric_sum(jnp.asarray(x), jnp.asarray(y), jnp.asarray(float(t))))
  np.testing.assert_allclose(got, want, rtol=2e-5)


@pytest.mark.parametrize("b1,b2", [(0.9, 0.999), (0.5, 0.9), (0.0, 0.99), (0.99, 0.9)])
@pytest.mark.parametrize("t", [1, 3, 40])
def test_step_bound_is_the_cauchy_schwarz_bound(b1, b2, t):
  """Adam: m_hat = sum w_k g_k, v_hat = sum c_k g_k^2, so |m_hat| / sqrt(v_hat)
  <= sqrt(sum w_k^2 / c_k), attained for g_k proportional to w_k / c_k."""
  k = np.arange(t)
  w = (1 - b1) * b1**k / (1 - b1**t)
  c = (1 - b2) * b2**k / (1 - b2**t)
  want = np.sqrt(np.sum(w**2 / c))
  g = w / c  # the maximizing sequence attains it
  attained = abs(np.sum(w * g)) / np.sqrt(np.sum(c * g**2))
  np.testing.assert_allclose(attained, want, rtol=1e-12)
  cfg = config.Config(b1=b1, b2=b2, eps=0.0, eps_root=0.0, mu_dtype=None, nu_dtype=None)
  got = float(rule.step_bound(cfg, jnp.asarray(float(t)), jnp.float32))
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_safe_divide_is_zero_where_the_numerator_is():
  got = rule.safe_divide(jnp.asarray([0.0, 1.0, -2.0]), jnp.asarray([0.0, 4.0, 0.5]))
  np.testing.assert_array_equal(np.asarray(got), [0.0, 0.25, -4.0])


def test_saturate_clips_overflow_and_keeps_nan():
  big = float(jnp.finfo(jnp.float16).max)
  x = jnp.asarray([jnp.inf, -jnp.inf, 1.0, jnp.nan], jnp.float16)
  got = np.asarray(rule.saturate(x), np.float64)
  np.testing.assert_array_equal(got[:3], [big, -big, 1.0])
  assert np.isnan(got[3])


def test_abs_sq_of_complex_is_real():
  g = jnp.asarray([3 + 4j, -1j], jnp.complex64)
  got = rule.abs_sq(g)
  assert got.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(got), [25.0, 1.0])
