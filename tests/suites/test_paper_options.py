"""The Adam-family options against a float64 NumPy transcription, to 1e-10.

``reference`` below is written from the formulas, not from adam_jax:

- Algorithm 1 of Kingma & Ba (2015), with the efficient form of the end of
  their Section 2 (``alpha_t = alpha sqrt(1 - b2^t) / (1 - b1^t)``,
  ``theta_t = theta_{t-1} - alpha_t m_t / (sqrt(v_t) + eps_hat)``) for
  ``eps_hat=True``, and the uncorrected moments of their Section 3 for
  ``bias_correction=False``;
- AdaMax, their Algorithm 2 (Section 7.1), with eps inside the maximum;
- temporal averaging, their Section 7.2: ``bar_t = b bar_{t-1} + (1 - b)
  theta_t``, ``bar_0 = 0``, read as ``bar_t / (1 - b^t)``; and Keras's
  ``use_ema`` (``ema_1 = theta_1``, then the same recursion, no correction);
- AMSGrad as PyTorch documents it (max of the raw v_t, then bias
  correction), coupled L2 (``g + lambda theta``) after ``maximize`` negates g,
  decoupled decay ``-alpha lambda theta`` (AdamW) or ``-lambda theta``
  (``decouple_lr``), and Dozat's Nesterov correction as in optax.

Every combination below runs 300 steps of the rich gradient sequence of
``test_paper_reference`` (magnitudes 1e-6..1e2, zero steps) in float64 and
compares every parameter, and the average where there is one, at every step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from tests.suites.test_paper_reference import assert_rel_close
from tests.suites.test_paper_reference import initial_params
from tests.suites.test_paper_reference import rich_gradients


def reference(
  theta0,
  grads,
  *,
  alpha=1e-3,
  b1=0.9,
  b2=0.999,
  eps=1e-8,
  adamax=False,
  nesterov=False,
  amsgrad=False,
  maximize=False,
  l2=0.0,
  decoupled=0.0,
  decouple_lr=False,
  bias_correction=True,
  eps_hat=False,
  average=None,
  average_mode="paper",
):
  """The options above, one line each, in float64. Returns (thetas, averages)."""
  theta = np.array(theta0, np.float64)
  m = np.zeros_like(theta)
  v = np.zeros_like(theta)
  v_max = np.zeros_like(theta)
  bar = np.zeros_like(theta)
  thetas, averages = [], []
  for t in range(1, len(grads) + 1):
    g = np.array(grads[t - 1], np.float64)
    if maximize:
      g = -g
    g = g + l2 * theta
    m = b1 * m + (1 - b1) * g
    c1 = (1 - b1**t) if bias_correction else 1.0
    c1_next = (1 - b1 ** (t + 1)) if bias_correction else 1.0
    if nesterov:
      m_hat = b1 * m / c1_next + (1 - b1) * g / c1
    else:
      m_hat = m / c1
    if adamax:
      v = np.maximum(b2 * v, np.abs(g) + eps)
      direction = m_hat / v
    else:
      v = b2 * v + (1 - b2) * g**2
      v_max = np.maximum(v_max, v)
      v_used = v_max if amsgrad else v
      c2 = (1 - b2**t) if bias_correction else 1.0
      if eps_hat:  # alpha_t m_t / (sqrt(v_t) + eps_hat), alpha_t carrying sqrt(c2)
        direction = m_hat * np.sqrt(c2) / (np.sqrt(v_used) + eps)
      else:
        direction = m_hat / (np.sqrt(v_used / c2) + eps)
    if decouple_lr:
      theta = theta - alpha * direction - decoupled * theta
    else:
      theta = theta - alpha * (direction + decoupled * theta)
    thetas.append(theta)
    if average is not None:
      if average_mode == "paper":
        bar = average * bar + (1 - average) * theta
        averages.append(bar / (1 - average**t))
      else:
        bar = theta if t == 1 else average * bar + (1 - average) * theta
        averages.append(bar)
  return np.stack(thetas), (np.stack(averages) if averages else None)


# (name, adam_jax constructor kwargs, reference kwargs)
COMBINATIONS = [
  ("amsgrad", "adam", dict(amsgrad=True), dict(amsgrad=True)),
  ("eps_hat", "adam", dict(eps_hat=True, eps=1e-7), dict(eps_hat=True, eps=1e-7)),
  (
    "keras-amsgrad",
    "adam",
    dict(eps_hat=True, eps=1e-7, amsgrad=True),
    dict(eps_hat=True, eps=1e-7, amsgrad=True),
  ),
  (
    "no-bias-correction",
    "adam",
    dict(bias_correction=False),
    dict(bias_correction=False),
  ),
  (
    "no-bias-correction-eps_hat-amsgrad",
    "adam",
    dict(bias_correction=False, eps_hat=True, amsgrad=True),
    dict(bias_correction=False, eps_hat=True, amsgrad=True),
  ),
  (
    "maximize-l2-amsgrad",
    "adam",
    dict(maximize=True, weight_decay=0.1, amsgrad=True),
    dict(maximize=True, l2=0.1, amsgrad=True),
  ),
  (
    "nesterov-l2-amsgrad",
    "adam",
    dict(nesterov=True, weight_decay=0.01, amsgrad=True),
    dict(nesterov=True, l2=0.01, amsgrad=True),
  ),
  (
    "nesterov-no-bias-correction",
    "adam",
    dict(nesterov=True, bias_correction=False),
    dict(nesterov=True, bias_correction=False),
  ),
  (
    "adamw-maximize-amsgrad",
    "adamw",
    dict(weight_decay=0.05, maximize=True, amsgrad=True),
    dict(decoupled=0.05, maximize=True, amsgrad=True),
  ),
  (
    "adamw-decouple_lr-eps_hat",
    "adamw",
    dict(weight_decay=1e-4, decouple_lr=True, eps_hat=True),
    dict(decoupled=1e-4, decouple_lr=True, eps_hat=True),
  ),
  ("adamax", "adamax", dict(), dict(adamax=True)),
  (
    "adamax-l2-maximize",
    "adamax",
    dict(weight_decay=0.1, maximize=True),
    dict(adamax=True, l2=0.1, maximize=True),
  ),
  # Parameter averaging composed with the options above.
  ("average", "adam", dict(average_decay=0.99), dict(average=0.99)),
  (
    "average-keras",
    "adam",
    dict(average_decay=0.99, average_mode="keras"),
    dict(average=0.99, average_mode="keras"),
  ),
  (
    "average-amsgrad-eps_hat-l2-maximize",
    "adam",
    dict(
      average_decay=0.9, amsgrad=True, eps_hat=True, weight_decay=0.1, maximize=True
    ),
    dict(average=0.9, amsgrad=True, eps_hat=True, l2=0.1, maximize=True),
  ),
  (
    "average-nesterov-no-bias-correction",
    "adam",
    dict(average_decay=0.999, nesterov=True, bias_correction=False),
    dict(average=0.999, nesterov=True, bias_correction=False),
  ),
  (
    "average-adamw-decouple_lr",
    "adamw",
    dict(average_decay=0.95, weight_decay=1e-4, decouple_lr=True),
    dict(average=0.95, decoupled=1e-4, decouple_lr=True),
  ),
  (
    "average-keras-adamw-amsgrad-eps_hat",
    "adamw",
    dict(average_decay=0.99, average_mode="keras", amsgrad=True, eps_hat=True),
    dict(
      average=0.99, average_mode="keras", amsgrad=True, eps_hat=True, decoupled=1e-4
    ),
  ),
  (
    "average-adamax",
    "adamax",
    dict(average_decay=0.99),
    dict(adamax=True, average=0.99),
  ),
]


def run_ours(tx, theta0, grads):
  params = jnp.asarray(theta0, jnp.float64)
  state = tx.init(params)

  @jax.jit
  def step(carry, g):
    params, state = carry
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
    return (params, state), params

  (_, state), thetas = jax.lax.scan(step, (params, state), jnp.asarray(grads))
  return np.asarray(thetas), state


@pytest.mark.parametrize(
  ("maker", "ours", "ref"),
  [pytest.param(m, o, r, id=n) for n, m, o, r in COMBINATIONS],
)
def test_options_match_float64_reference(x64, maker, ours, ref):
  grads = rich_gradients()
  theta0 = initial_params(grads.shape[1])
  alpha = 2e-3 if maker == "adamax" else 1e-3
  tx = getattr(adam_jax, maker)(alpha, **ours)
  thetas, state = run_ours(tx, theta0, grads)
  ref_thetas, ref_averages = reference(theta0, grads, alpha=alpha, **ref)
  for t in range(len(grads)):
    assert_rel_close(thetas[t], ref_thetas[t], f"theta at t={t + 1}")
  if ref_averages is None:
    with pytest.raises(ValueError, match="average_decay"):
      adam_jax.averaged_params(state)
    return
  average = np.asarray(adam_jax.averaged_params(state))
  assert average.dtype == np.float64
  assert_rel_close(average, ref_averages[-1], "average after the last step")


@pytest.mark.parametrize("mode", ["paper", "keras"])
def test_average_at_every_step_matches_reference(x64, mode):
  grads = rich_gradients()[:120]
  theta0 = initial_params(grads.shape[1])
  tx = adam_jax.adam(1e-2, average_decay=0.9, average_mode=mode)
  params = jnp.asarray(theta0, jnp.float64)
  state = tx.init(params)
  np.testing.assert_array_equal(adam_jax.averaged_params(state), theta0)
  _, ref = reference(theta0, grads, alpha=1e-2, average=0.9, average_mode=mode)
  step = jax.jit(tx.update)
  for t, g in enumerate(grads):
    updates, state = step(jnp.asarray(g), state, params)
    params = optax.apply_updates(params, updates)
    assert_rel_close(adam_jax.averaged_params(state), ref[t], f"average at t={t + 1}")


def test_paper_and_keras_averages_differ():
  """The two modes are different estimators (the reference agrees)."""
  grads = rich_gradients()[:50]
  theta0 = initial_params(grads.shape[1])
  _, paper = reference(theta0, grads, alpha=1e-2, average=0.9)
  _, keras = reference(theta0, grads, alpha=1e-2, average=0.9, average_mode="keras")
  assert np.max(np.abs(paper[-1] - keras[-1])) > 1e-3
