"""``adam_jax._src.storage.int8``: block-wise 8-bit moments
(``mu_dtype``/``nu_dtype="int8"``).

References are independent of the code under test: the code maps and the
nearest-code rounding are re-derived in float64 NumPy (``np.argmin`` over the
table), and an Adam step on decoded moments is transcribed in float64.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from adam_jax._src import packing
from adam_jax._src.storage import int8
from tests._jit import compiles
from tests._trees import assert_trees_equal
from tests._trees import jitted_step
from tests._trees import run_steps
from tests.conftest import optax_mode

BLOCK = 256


def _table(signed):
  """The dynamic tree map from its definition (decades, linear fractions)."""
  top = 6 if signed else 7
  mags = [0.0, 10.0**-top]
  for k in range(top - 1, -1, -1):
    n = 2 ** (top - k)
    mags += [10.0**-k * (0.1 + 0.9 * j / n) for j in range(1, n + 1)]
  mags = np.array(mags)
  return np.concatenate([-mags[:0:-1], mags]) if signed else mags


def _nearest(x, scale, signed):
  """Nearest code value (float64) of each element, per block scale."""
  table = _table(signed)
  a = np.where(scale > 0, x / np.where(scale > 0, scale, 1), 0)
  index = np.abs(a[..., None] - table).argmin(-1)
  return table[index] * scale


def _blocks(x):
  """The 8-bit blocks of ``x`` as the rows of a float64 matrix: along the
  block axis (the last axis ``a`` whose trailing axes ``shape[a:]`` hold at
  least ``BLOCK`` values; 0 if none), whole slices ``shape[a]`` at a time,
  as many as hold at most ``BLOCK`` values, zero padded at the end."""
  x = np.asarray(x, np.float64)
  shape = x.shape or (1,)
  a = max([0] + [i for i in range(len(shape)) if np.prod(shape[i:]) >= BLOCK])
  per_slice = int(np.prod(shape[a + 1 :]))
  rows = max(1, BLOCK // per_slice)
  slices = x.reshape(-1, shape[a], per_slice)
  slices = np.pad(slices, ((0, 0), (0, -shape[a] % rows), (0, 0)))
  return slices.reshape(-1, rows * per_slice)


def test_code_maps():
  for signed, size in ((True, 255), (False, 256)):
    ours = adam_jax.code_map(signed)
    np.testing.assert_allclose(ours, _table(signed), rtol=1e-15)
    assert len(ours) == size and np.all(np.diff(ours) > 0)
    assert 0.0 in ours and ours.max() == 1.0
  assert adam_jax.code_map(True).min() == -1.0


CASES = {
  "normal": lambda r, n: r.standard_normal(n),
  "heavy_tailed": lambda r, n: r.standard_cauchy(n) * np.exp(3 * r.standard_normal(n)),
  "all_zero": lambda r, n: np.zeros(n),
  "tiny": lambda r, n: r.standard_normal(n) * 1e-30,
  "huge": lambda r, n: r.standard_normal(n) * 1e37,
  "float_max": lambda r, n: np.where(
    np.arange(n) % 7 == 0, 3.4e38, r.standard_normal(n)
  ),
  "one_spike": lambda r, n: np.where(np.arange(n) == 5, 1e6, r.standard_normal(n)),
}


# One compiled round trip per shape and map, shared by the cases.
_quantize = jax.jit(lambda x, signed: int8.quantize([x], [signed])[0], static_argnums=1)
_dequantize = jax.jit(int8.dequantize)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize(
  "shape", [(1000,), (12, 300), (3, 4, 64), (5, 256), (64, 96), (7, 3, 100), ()]
)
@pytest.mark.parametrize("signed", [True, False])
def test_round_trip_is_the_nearest_code_within_the_stated_bound(case, shape, signed):
  rng = np.random.default_rng(0)
  x = CASES[case](rng, int(np.prod(shape))).astype(np.float32).reshape(shape)
  if not signed:
    x = np.abs(x)
  q = _quantize(jnp.asarray(x), signed)
  assert q.codes.dtype == (np.int8 if signed else np.uint8)
  assert q.codes.shape == shape
  assert q.scales.shape == int8.scales_shape(shape)
  y = np.asarray(_dequantize(q), np.float64)
  assert y.shape == shape
  xb, yb = _blocks(x), _blocks(y)
  scale = np.abs(xb).max(1, keepdims=True)
  np.testing.assert_allclose(np.asarray(q.scales).reshape(-1), scale[:, 0], rtol=0)
  # Nearest code (a tie may go either way: within float32 rounding of it).
  err, best = np.abs(yb - xb), np.abs(_nearest(xb, scale, signed) - xb)
  assert np.all(err <= best + 2e-6 * scale), (err - best).max()
  # The stated bound, exact zeros, exact block maxima, signs.
  bound = (0.45 / 64 if signed else 0.45 / 128) * scale * (1 + 1e-6)
  assert np.all(err <= bound)
  assert np.all(yb[xb == 0] == 0)
  at_max = np.abs(xb) == scale
  np.testing.assert_allclose(np.abs(yb)[at_max], np.abs(xb)[at_max], rtol=1e-7)
  assert np.all(np.sign(yb) * np.sign(xb) >= 0)
  if not signed:  # a positive second moment never becomes 0
    assert np.all(yb[xb > 0] > 0)


def test_non_finite_values_do_not_poison_their_block():
  rng = np.random.default_rng(1)
  x = rng.standard_normal(512).astype(np.float32)
  bad = x.copy()
  bad[[3, 300]] = [np.nan, np.inf]
  bad[7] = -np.inf
  (q,) = int8.quantize([jnp.asarray(bad)], [True])
  (ref,) = int8.quantize([jnp.asarray(np.where(np.isfinite(bad), bad, 0))], [True])
  y, y_ref = np.asarray(q.dequantize()), np.asarray(ref.dequantize())
  scales = np.asarray(ref.scales)
  np.testing.assert_array_equal(np.asarray(q.scales), scales)
  others = np.isfinite(bad)
  np.testing.assert_array_equal(y[others], y_ref[others])
  assert y[3] == 0 and y[300] == scales[1] and y[7] == -scales[0]


def _adam_step_f64(g, m, v, t, b1=0.9, b2=0.999, eps=1e-8):
  """Algorithm 1 of Kingma & Ba (2015), float64, on decoded moments."""
  m = b1 * m + (1 - b1) * g
  v = b2 * v + (1 - b2) * g * g
  u = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
  # adam_jax's documented guarantee: |u| <= B_t, the Cauchy-Schwarz bound of
  # |m_hat| / sqrt(v_hat) (decoded moments need not be consistent with it).
  r = b1 * b1 / b2
  g_sum = sum(r**k for k in range(t))
  bound = np.sqrt((1 - b1) ** 2 * (1 - b2**t) * g_sum / ((1 - b2) * (1 - b1**t) ** 2))
  bound *= 1 + 2.0**-12  # the documented rounding allowance (BOUND_SLACK)
  return np.clip(u, -bound, bound), m, v


@pytest.fixture
def pack_from_8_leaves(monkeypatch):
  """Packing from 8 small leaves instead of 64: a packed 8-bit state from a
  tree that compiles in a fraction of the time."""
  monkeypatch.setattr(packing, "PACK_MIN_LEAVES", 8)


@pytest.mark.parametrize("pack", [False, True])
def test_each_step_matches_float64_adam_on_the_decoded_moments(
  pack, pack_from_8_leaves
):
  rng = np.random.default_rng(2)
  shapes = [(64, 96), (5000,), (3, 4, 512)] + [(4096,)] * (8 if pack else 0)
  params = {f"p{i:02d}": jnp.zeros(s, jnp.float32) for i, s in enumerate(shapes)}
  tx = adam_jax.scale_by_adam(mu_dtype="int8", nu_dtype="int8")
  state = tx.init(params)
  assert adam_jax.PackedMoments is not None
  assert isinstance(state.mu, adam_jax.PackedMoments) == pack
  update = jax.jit(tx.update)
  for t in range(1, 6):
    grads = {
      k: jnp.asarray(
        rng.standard_normal(p.shape) * np.exp(rng.standard_normal())
      ).astype(jnp.float32)
      for k, p in params.items()
    }
    u, new = update(grads, state)
    for k in ("p00", "p01", "p02", "p10") if pack else ("p00", "p01", "p02"):
      m0 = np.asarray(_decoded(state.mu, k), np.float64)
      v0 = np.asarray(_decoded(state.nu, k), np.float64)
      g = np.asarray(grads[k], np.float64)
      u_ref, m_ref, v_ref = _adam_step_f64(g, m0, v0, t)
      np.testing.assert_allclose(np.asarray(u[k]), u_ref, rtol=2e-5, atol=1e-6)
      for got, want, signed in (
        (_decoded(new.mu, k), m_ref, True),
        (_decoded(new.nu, k), v_ref, False),
      ):
        got = _blocks(np.asarray(got, np.float64))
        want = _blocks(want)
        scale = np.abs(want).max(1, keepdims=True)
        bound = (0.45 / 64 if signed else 0.45 / 128) * scale
        assert np.all(np.abs(got - want) <= bound * (1 + 1e-4) + 1e-30)
        table = _table(signed)
        got_scale = np.abs(got).max(1, keepdims=True)
        got_code = np.abs(got / np.where(got_scale > 0, got_scale, 1))[..., None]
        want_code = np.abs(
          _nearest(want, scale, signed) / np.where(scale > 0, scale, 1)
        )
        codes_equal = np.mean(
          np.abs(got_code - table).argmin(-1)
          == np.abs(want_code[..., None] - table).argmin(-1)
        )
        assert codes_equal > 0.99, codes_equal
    state = new


def _decoded(moment, key):
  x = moment[key]
  return x.dequantize() if isinstance(x, adam_jax.QuantizedMoment) else x


def _tree(sizes):
  return {f"l{i:03d}": jnp.zeros(s, jnp.float32) for i, s in enumerate(sizes)}


def _state_bytes(state):
  """Bytes of the state's arrays, less its scalars (the step count: 4 bytes
  for the whole model, not per parameter)."""
  return sum(x.nbytes for x in jax.tree.leaves(state) if jnp.ndim(x))


@pytest.mark.parametrize("pack", [False, True])
def test_state_bytes_per_parameter(pack):
  # A 4.2M-parameter transformer-like tree (4 blocks of 256-wide layers).
  shapes = [(4096, 256)]  # an embedding
  for _ in range(4):
    shapes += [(256, 768), (256, 256), (256, 1024), (1024, 256), (256,), (256,)]
  shapes += [(128, 512)] * (70 if pack else 0)  # 65,536-element leaves: packed
  params = _tree(shapes)
  n = sum(int(np.prod(s)) for s in shapes)
  assert n > 4_000_000
  per_param = {}
  for name, dtype in (("f32", None), ("bf16", jnp.bfloat16), ("int8", "int8")):
    state = adam_jax.adam(mu_dtype=dtype, nu_dtype=dtype).init(params)
    per_param[name] = _state_bytes(state) / n
  assert abs(per_param["f32"] - 8) < 0.01
  assert per_param["bf16"] <= 4.0
  assert per_param["int8"] <= 2.1, per_param


def _train(tx, params, grads, steps):
  gradients = [grads(k) for k in range(steps)]
  return run_steps(jitted_step(tx), params, tx.init(params), gradients)


def _grads_for(params, seed=3):
  rng = np.random.default_rng(seed)
  table = [
    jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
    for _ in range(8)
  ]
  return lambda k: table[k % len(table)]


@pytest.mark.parametrize(
  "wrap",
  ["plain", "inject_hyperparams", "multi_steps", "masked", "skip_nonfinite", "chain"],
)
def test_works_with_optax_wrappers(wrap):
  params = {"w": jnp.zeros((32, 256)), "b": jnp.zeros(8)}
  make = {
    "plain": lambda: adam_jax.adamw(0.01, mu_dtype="int8", nu_dtype="int8"),
    "inject_hyperparams": lambda: optax.inject_hyperparams(
      adam_jax.adam, static_args=("int8_min_size",)
    )(0.01, mu_dtype="int8", nu_dtype="int8"),
    "multi_steps": lambda: optax.MultiSteps(
      adam_jax.adam(0.01, mu_dtype="int8", nu_dtype="int8"), 2
    ),
    "masked": lambda: optax.masked(
      adam_jax.adam(0.01, mu_dtype="int8", nu_dtype="int8"), {"w": True, "b": False}
    ),
    "skip_nonfinite": lambda: adam_jax.adam(
      0.01, mu_dtype="int8", nu_dtype="int8", skip_nonfinite=True
    ),
    "chain": lambda: optax.chain(
      optax.clip_by_global_norm(1.0), adam_jax.adam(0.01, mu_dtype="int8")
    ),
  }[wrap]
  float_make = {
    "plain": lambda: adam_jax.adamw(0.01),
    "inject_hyperparams": lambda: adam_jax.adam(0.01),
    "multi_steps": lambda: optax.MultiSteps(adam_jax.adam(0.01), 2),
    "masked": lambda: optax.masked(adam_jax.adam(0.01), {"w": True, "b": False}),
    "skip_nonfinite": lambda: adam_jax.adam(0.01),
    "chain": lambda: optax.chain(optax.clip_by_global_norm(1.0), adam_jax.adam(0.01)),
  }[wrap]
  grads = _grads_for(params)
  with optax_mode():  # optax's MultiSteps and masked promote int and float
    got, _ = _train(make(), params, grads, 12)
    want, _ = _train(float_make(), params, grads, 12)
  # 8-bit moments (a few % off per element) move the parameters like float32.
  for k in params:
    moved = np.abs(np.asarray(want[k])).max()
    assert np.abs(np.asarray(got[k]) - np.asarray(want[k])).max() <= 0.1 * moved


def test_nonfinite_step_is_skipped_bit_for_bit():
  params = {"w": jnp.zeros((16, 512))}
  tx = adam_jax.adam(0.01, mu_dtype="int8", nu_dtype="int8", skip_nonfinite=True)
  _, state = _train(tx, params, _grads_for(params), 3)
  bad = {"w": jnp.ones((16, 512)).at[3, 4].set(jnp.nan)}
  u, new = jax.jit(tx.update)(bad, state, params)
  assert not np.any(np.asarray(u["w"]))
  for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(state), strict=True):
    if a is not None and hasattr(a, "dtype") and a.ndim:
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_no_recompile_and_packed_equals_per_leaf(pack_from_8_leaves):
  # (64, 96): blocks of two 96-value rows, not the flat chunk's 256 values,
  # so that leaf keeps its own arrays in a packed state.
  sizes = [(4096,)] * 5 + [(300, 16)] * 4 + [(64, 96)]
  params = _tree(sizes)
  grads = _grads_for(params)
  packed = adam_jax.adam(0.01, mu_dtype="int8", nu_dtype="int8")
  plain = adam_jax.adam(0.01, mu_dtype="int8", nu_dtype="int8", pack_small_leaves=False)
  s_packed = packed.init(params)
  assert isinstance(s_packed[0].mu, adam_jax.PackedMoments)
  assert any(isinstance(c, adam_jax.QuantizedMoment) for c in s_packed[0].mu.chunks)
  assert [q.shape for q in s_packed[0].mu.own] == [(64, 96)]
  step = jitted_step(packed, max_traces=1)
  p1, p2, s_plain = params, params, plain.init(params)
  plain_update = jax.jit(plain.update)

  def both(k, p1, p2, s_packed, s_plain):
    p1, s_packed = step(p1, s_packed, grads(k))
    u, s_plain = plain_update(grads(k), s_plain, p2)
    return p1, optax.apply_updates(p2, u), s_packed, s_plain

  p1, p2, s_packed, s_plain = both(0, p1, p2, s_packed, s_plain)
  with compiles() as compiled:  # init's state compiles like the step's output
    for k in range(1, 6):
      p1, p2, s_packed, s_plain = both(k, p1, p2, s_packed, s_plain)
  assert not compiled, f"{len(compiled)} compilations after the first step"
  # The same blocks either way; float rounding (ulps, as XLA fuses each
  # layout differently) may flip a code near a tie now and then, moving
  # that element by a step's rounding.
  for k in params:
    np.testing.assert_allclose(np.asarray(p1[k]), np.asarray(p2[k]), atol=2e-5)


def test_orbax_round_trip_resumes_bit_identically(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  params = {"w": jnp.zeros((32, 512)), "b": jnp.zeros(8)}
  tx = adam_jax.adam(0.01, mu_dtype="int8", nu_dtype="int8", amsgrad=True)
  grads = _grads_for(params)
  p, state = _train(tx, params, grads, 3)
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(tmp_path / "state", state)
  with ocp.StandardCheckpointer() as ckpt:
    restored = ckpt.restore(tmp_path / "state", jax.eval_shape(tx.init, params))
  assert_trees_equal(restored, state)
  update = jax.jit(chex.assert_max_traces(tx.update, 1))
  u1, _ = update(grads(3), state, p)
  u2, _ = update(grads(3), restored, p)
  np.testing.assert_array_equal(np.asarray(u1["w"]), np.asarray(u2["w"]))
