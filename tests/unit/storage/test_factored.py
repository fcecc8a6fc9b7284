"""``adam_jax._src.storage.factored``: a factored second moment
(``nu_dtype="factored"``).

The reference is Adafactor's factored second moment (Shazeer & Stern, 2018,
Algorithm 4 without update clipping or relative steps) inside Adam's step,
transcribed in float64 NumPy: row and column EMAs of ``g**2``, the rank-1
reconstruction ``R C / mean(R)``, bias correction and ``eps`` as Adam's, and
adam_jax's documented step bound.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from adam_jax._src.storage import factored


@pytest.mark.parametrize(
  "shape,axes",
  [
    ((64, 512), (0, 1)),
    ((512, 64), (0, 1)),
    ((3, 3, 32, 64), (2, 3)),
    ((8, 2, 8), (0, 2)),
  ],
)
def test_the_two_largest_axes_are_factored(shape, axes):
  assert factored.factored_axes(shape) == axes
  tx = adam_jax.adam(nu_dtype="factored", int8_min_size=1)
  state = tx.init({"w": jnp.zeros(shape)})
  nu = state[0].nu["w"]
  a, b = axes
  assert nu.axes == axes
  assert nu.row.shape == shape[:b] + shape[b + 1 :]
  assert nu.col.shape == shape[:a] + shape[a + 1 :]


def test_a_rank_one_moment_is_reconstructed_exactly_and_means_are_kept():
  rng = np.random.default_rng(0)
  r, c = np.exp(rng.standard_normal(40)), np.exp(rng.standard_normal(50))
  v = np.einsum("i,j->ij", r, c).astype(np.float32)
  got = factored.dequantize(factored.factored(jnp.asarray(v)))
  np.testing.assert_allclose(np.asarray(got), v, rtol=1e-5)
  # Any v: the reconstruction has v's row and column means.
  v = np.abs(rng.standard_normal((3, 40, 50))).astype(np.float32)
  rec = np.asarray(factored.dequantize(factored.factored(jnp.asarray(v))))
  np.testing.assert_allclose(rec.mean(axis=2), v.mean(axis=2), rtol=1e-5)
  np.testing.assert_allclose(rec.mean(axis=1), v.mean(axis=1), rtol=1e-5)
  # All zero (the initial state): zero, not 0/0.
  zero = factored.dequantize(factored.factored(jnp.zeros((4, 6))))
  assert not np.any(np.asarray(zero))


def _factored_adam_f64(grads, b1=0.9, b2=0.999, eps=1e-8):
  """Adam with Adafactor's factored v over the last two axes of a 3-axis
  tensor (its two largest here), float64: the updates of every step, and
  the last row and column statistics."""
  g0 = grads[0]
  m = np.zeros_like(g0)
  row = np.zeros(g0.shape[:-1])
  col = np.zeros(g0.shape[:-2] + g0.shape[-1:])
  out = []
  for t, g in enumerate(grads, start=1):
    m = b1 * m + (1 - b1) * g
    row = b2 * row + (1 - b2) * (g * g).mean(axis=-1)
    col = b2 * col + (1 - b2) * (g * g).mean(axis=-2)
    v = row[..., :, None] * col[..., None, :] / row.mean(axis=-1)[..., None, None]
    u = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    g_sum = sum((b1 * b1 / b2) ** k for k in range(t))
    bound = np.sqrt((1 - b1) ** 2 * (1 - b2**t) * g_sum / ((1 - b2) * (1 - b1**t) ** 2))
    out.append(np.clip(u, -bound * (1 + 2.0**-12), bound * (1 + 2.0**-12)))
  return out, row, col


def test_every_step_matches_float64_adam_with_adafactors_factored_moment():
  rng = np.random.default_rng(1)
  shape = (3, 40, 50)
  grads = [
    rng.standard_normal(shape) * np.exp(rng.standard_normal(shape[1:]))
    for _ in range(20)
  ]
  want, row, col = _factored_adam_f64(grads)
  tx = adam_jax.scale_by_adam(nu_dtype="factored")
  state = tx.init(jnp.zeros(shape))
  update = jax.jit(tx.update)
  for g, u_ref in zip(grads, want, strict=True):
    u, state = update(jnp.asarray(g, jnp.float32), state)
    np.testing.assert_allclose(np.asarray(u), u_ref, rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(state.nu.row), row, rtol=2e-5)
  np.testing.assert_allclose(np.asarray(state.nu.col), col, rtol=2e-5)


def test_small_and_one_axis_leaves_keep_a_full_float32_moment():
  params = {
    "vector": jnp.zeros(8192, jnp.bfloat16),
    "small": jnp.zeros((16, 16), jnp.bfloat16),
    "big": jnp.zeros((64, 128), jnp.bfloat16),
  }
  nu = adam_jax.adam(nu_dtype="factored").init(params)[0].nu
  assert nu["vector"].dtype == jnp.float32 and nu["vector"].shape == (8192,)
  assert nu["small"].dtype == jnp.float32 and nu["small"].shape == (16, 16)
  assert isinstance(nu["big"], adam_jax.FactoredMoment)
  nu = adam_jax.adam(nu_dtype="factored", int8_min_size=100).init(params)[0].nu
  assert isinstance(nu["small"], adam_jax.FactoredMoment)


@pytest.mark.parametrize(
  "build,words",
  [
    (lambda: adam_jax.adam(nu_dtype="factored", amsgrad=True), ["AMSGrad"]),
    (lambda: adam_jax.scale_by_adam(nu_dtype="factored", amsgrad=True), ["AMSGrad"]),
    (lambda: adam_jax.adam(mu_dtype="factored"), ["mu_dtype='factored'", "second"]),
  ],
)
def test_options_that_need_an_elementwise_moment_are_refused(build, words):
  with pytest.raises(ValueError) as info:
    build()
  for word in words:
    assert word in str(info.value), (word, str(info.value))


def test_converges_on_a_least_squares_problem_like_float32_moments():
  rng = np.random.default_rng(2)
  a = jnp.asarray(rng.standard_normal((256, 64)), jnp.float32)
  w_true = jnp.asarray(rng.standard_normal((64, 32)), jnp.float32)
  y = a @ w_true

  def loss(w):
    return jnp.mean((a @ w - y) ** 2)

  def train(tx):
    def step(carry, _):
      w, s = carry
      u, s = tx.update(jax.grad(loss)(w), s, w)
      return (optax.apply_updates(w, u), s), None

    w0 = jnp.zeros((64, 32))
    (w, _), _ = jax.lax.scan(step, (w0, tx.init(w0)), length=300)
    return float(loss(w))

  start = float(loss(jnp.zeros((64, 32))))
  full = train(adam_jax.adam(0.05))
  fact = train(adam_jax.adam(0.05, nu_dtype="factored", int8_min_size=1024))
  assert fact < 1e-3 * start and full < 1e-3 * start, (start, full, fact)
