"""The guarantees of the guarantees guide, on every modern variant (issue 26).

For finite gradients anywhere in float32's, bfloat16's and float16's range
(the largest value, subnormals, 0), each variant's updates are finite, and
within the step bound where the variant has one, computed here independently
in float64:

* ADOPT: the first moment averages gradients clipped at c_s = s**0.25
  (s the count before the step), so |u_t| <= lr * max_s c_s;
* AdEMAMix: Adam's bound (test_guarantees.bound) plus alpha times the slow
  EMA's, sqrt(sum_k w_k^2 / c_k) with w_k = (1 - b3) b3^k (no correction);
* StableAdamW: Adam's bound (the clip only divides by max(1, RMS) >= 1);
* Adam-atan2: a * pi / 2;
* cautious AdamW: Adam's bound times n / 2 (the rescale n / (#agree + 1),
  at least one element agreeing when any is kept);
* AdaMaxW: AdaMax's bound;
* RAdam: Adam's bound once rectified (r_t <= 1); before, the bias-corrected
  mean of the gradients, finite only;
* schedule-free AdamW: finite (an interpolation of finite iterates).

Zero gradients in float16 and bfloat16 give finite (zero) updates: no NaN.
"""

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import jax.numpy as jnp
import numpy as np
import pytest

from tests._variants import VARIANTS
from tests.suites.test_guarantees import EXTREMES
from tests.suites.test_guarantees import SLACK
from tests.suites.test_guarantees import _run_updates
from tests.suites.test_guarantees import bound
from tests.suites.test_guarantees import weights

LR = 1e-3
STEPS = 12
SIZE = 6


def _slow_bound(t, b1, b2, b3):
  _, c = weights(t, b1, b2)
  w = (1 - b3) * b3 ** np.arange(t, dtype=np.float64)
  return float(np.sqrt(np.sum(w * w / c)))


def step_bounds(name):
  """Per step t = 1..STEPS, the bound on |u_t| / lr, or None (finite only)."""
  ts = range(1, STEPS + 1)
  adam = np.array([bound(t, 0.9, 0.999) for t in ts])
  return {
    "adopt": np.array([max(s**0.25 for s in range(t)) for t in ts]),
    "adopt-cautious": None,  # the cautious rescale of ADOPT's step: finite
    "ademamix": np.array(
      [bound(t, 0.9, 0.999) + 5.0 * _slow_bound(t, 0.9, 0.999, 0.9999) for t in ts]
    ),
    "radam": None,
    "stable-adamw": adam,
    "adam-atan2": np.full(STEPS, 1.27 * np.pi / 2),
    "cautious-adamw": adam * SIZE / 2,
    "schedule-free-adamw": None,
    "adamaxw": np.array([bound(t, 0.9, 0.999, adamax=True) for t in ts]),
  }[name]


def _run(tx, grads):
  return _run_updates(tx, grads)[0]


@settings(max_examples=30, deadline=None)
@given(
  name=st.sampled_from(sorted(VARIANTS)),
  dtype=st.sampled_from(sorted(EXTREMES)),
  seed=st.integers(0, 2**16),
)
def test_updates_finite_and_bounded_at_any_magnitude(name, dtype, seed):
  rng = np.random.RandomState(seed)
  values = np.asarray(EXTREMES[dtype], np.float64)
  seq = rng.choice(values, size=(STEPS, SIZE)) * rng.choice([-1.0, 1.0], (STEPS, SIZE))
  grads = jnp.asarray(seq.astype(np.float32)).astype(dtype)
  u = _run(VARIANTS[name](LR), grads)
  assert np.all(np.isfinite(u)), (name, u)
  limit = step_bounds(name)
  if limit is not None:
    rounding = 2 * float(jnp.finfo(dtype).eps)
    assert np.all(np.abs(u) <= LR * limit[:, None] * (1 + SLACK + rounding)), name


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_zero_gradients_in_low_precision_give_no_nan(name, dtype):
  """optax #1754's trap (eps underflowing to 0 in float16) on every variant."""
  grads = jnp.zeros((5, SIZE), dtype)
  grads = grads.at[0].set(jnp.asarray(np.linspace(-1, 1, SIZE), dtype))
  u = _run(VARIANTS[name](LR), grads)
  assert np.all(np.isfinite(u)), (name, u)
