"""``adam_jax._src.storage.int4``: 4-bit moments (``mu_dtype``/``nu_dtype="int4"``).

References are independent of the code under test: the code maps are built
as Dettmers et al.'s ``create_dynamic_map(signed=True, 3, 4)`` builds them
and as Li et al.'s linear map without zero, the normalizations (blocks of
128 for the first moment, rank-1 row and column maxima for the second) and
the nearest-code rounding (``np.argmin`` over the table) are transcribed in
float64 NumPy, and an Adam step on decoded moments is Algorithm 1 in float64.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from adam_jax._src.storage import int4
from tests._trees import assert_trees_equal
from tests._trees import jitted_step
from tests._trees import run_steps
from tests.conftest import optax_mode

BLOCK = 128


def _dynamic_map_4bit():
  """bitsandbytes' ``create_dynamic_map(signed=True, max_exponent_bits=3,
  total_bits=4)``: for exponent i, the midpoints of 2**i + 1 equal bounds
  of [0.1, 1] times 10**(i - 2), both signs; then 0 and 1."""
  data = []
  for i in range(3):
    bounds = np.linspace(0.1, 1, 2**i + 1)
    means = (bounds[:-1] + bounds[1:]) / 2
    data += list(10.0 ** (-(3 - 1) + i) * means)
    data += list(-(10.0 ** (-(3 - 1) + i)) * means)
  data += [0.0, 1.0]
  return np.sort(np.array(data))


def _table(signed):
  return _dynamic_map_4bit() if signed else np.linspace(0, 1, 17)[1:]


def test_code_maps():
  for signed in (True, False):
    ours = adam_jax.code_map(signed, bits=4)
    np.testing.assert_allclose(ours, _table(signed), rtol=1e-15)
    assert len(ours) == 16 and np.all(np.diff(ours) > 0)
  assert 0.0 in adam_jax.code_map(True, bits=4)
  assert 0.0 not in adam_jax.code_map(False, bits=4)  # no zero point
  with pytest.raises(ValueError, match="bits must be 8 or 4, got bits=2"):
    adam_jax.code_map(True, bits=2)


def _blocks(x):
  """The blocks of ``x`` (float64 rows): along the last axis ``a`` whose
  trailing axes hold at least ``BLOCK`` values, whole slices at a time, as
  many as hold at most ``BLOCK`` values, zero padded at the end."""
  x = np.asarray(x, np.float64)
  shape = x.shape or (1,)
  a = max([0] + [i for i in range(len(shape)) if np.prod(shape[i:]) >= BLOCK])
  per_slice = int(np.prod(shape[a + 1 :]))
  rows = max(1, BLOCK // per_slice)
  slices = x.reshape(-1, shape[a], per_slice)
  slices = np.pad(slices, ((0, 0), (0, -shape[a] % rows), (0, 0)))
  return slices.reshape(-1, rows * per_slice)


def _rank1_scale(x):
  """Each element's rank-1 scale: the least maximum of |x| over the slices
  through it along each axis longer than 1."""
  ax = np.abs(np.asarray(x, np.float64))
  axes = [a for a, n in enumerate(ax.shape) if n > 1]
  scale = np.full(ax.shape, np.inf)
  for a in axes:
    others = tuple(i for i in range(ax.ndim) if i != a)
    scale = np.minimum(scale, ax.max(axis=others, keepdims=True))
  return scale


def _nearest(a, signed):
  table = _table(signed)
  return table[np.abs(a[..., None] - table).argmin(-1)]


def _reference(x, signed):
  """(decoded values, the scale of each element) in float64."""
  x = np.asarray(x, np.float64)
  if not signed and sum(n > 1 for n in x.shape) >= 2:
    scale = _rank1_scale(x)
    a = np.where(scale > 0, x / np.where(scale > 0, scale, 1), 0)
    return _nearest(a, signed) * scale, scale
  xb = _blocks(x)
  scale = np.abs(xb).max(1, keepdims=True)
  a = np.where(scale > 0, xb / np.where(scale > 0, scale, 1), 0)
  return _nearest(a, signed) * scale, np.broadcast_to(scale, xb.shape)


CASES = {
  "normal": lambda r, n: r.standard_normal(n),
  "heavy_tailed": lambda r, n: r.standard_cauchy(n) * np.exp(3 * r.standard_normal(n)),
  "all_zero": lambda r, n: np.zeros(n),
  "tiny": lambda r, n: r.standard_normal(n) * 1e-30,
  "huge": lambda r, n: r.standard_normal(n) * 1e37,
  "one_spike": lambda r, n: np.where(np.arange(n) == 5, 1e6, r.standard_normal(n)),
}

_quantize = jax.jit(int4.quantize, static_argnums=1)
_dequantize = jax.jit(int4.dequantize)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize(
  "shape", [(1000,), (12, 300), (3, 4, 64), (64, 97), (1, 300), (5, 1, 64), ()]
)
@pytest.mark.parametrize("signed", [True, False])
def test_round_trip_is_the_nearest_code_within_the_stated_bound(case, shape, signed):
  rng = np.random.default_rng(0)
  x = CASES[case](rng, int(np.prod(shape))).astype(np.float32).reshape(shape)
  if not signed:
    x = np.abs(x)
  q = _quantize(jnp.asarray(x), signed)
  assert q.codes.dtype == np.uint8
  assert q.codes.shape == (*(shape or (1,))[:-1], -(-(shape or (1,))[-1] // 2))
  y = np.asarray(_dequantize(q), np.float64)
  assert y.shape == shape
  want, scale = _reference(x, signed)
  rank1 = not signed and sum(n > 1 for n in shape) >= 2
  got, xs = (y, np.asarray(x, np.float64)) if rank1 else (_blocks(y), _blocks(x))
  # Nearest code (a tie may go either way: within float32 rounding of it).
  err, best = np.abs(got - xs), np.abs(want - xs)
  assert np.all(err <= best + 2e-6 * scale), (err - best).max()
  if signed:  # half the widest gaps of the map; zeros stay zero
    assert np.all(err <= 0.1125 * scale * (1 + 1e-6))
    assert np.all(got[xs == 0] == 0)
    assert np.all(np.sign(got) * np.sign(xs) >= 0)
  else:  # s/32, or rounded up to s/16 from below s/32; never 0 when x > 0
    assert np.all(err <= np.maximum(scale / 32, scale / 16 - xs) * (1 + 1e-6))
    assert np.all(got[xs > 0] > 0)


def test_codes_are_packed_two_to_a_byte_low_nibble_first():
  table = _table(True)
  x = np.array([table[i] for i in (15, 7, 0, 12, 3)], np.float32)  # an odd length
  q = int4.quantize(jnp.asarray(x), signed=True)
  assert np.asarray(q.codes).tolist() == [15 | 7 << 4, 0 | 12 << 4, 3]
  np.testing.assert_allclose(np.asarray(q.dequantize()), x, rtol=1e-7)


def test_rank1_second_moment_keeps_one_maximum_per_row_and_column():
  rng = np.random.default_rng(4)
  v = np.abs(rng.standard_normal((3, 40, 50))).astype(np.float32)
  q = int4.quantize(jnp.asarray(v), signed=False)
  assert q.rank1 and [s.shape for s in q.scales] == [(3,), (40,), (50,)]
  for a, s in enumerate(q.scales):
    others = tuple(i for i in range(3) if i != a)
    np.testing.assert_array_equal(np.asarray(s), v.max(axis=others))


def test_non_finite_values_do_not_poison_the_others():
  """NaN is stored as the zero code (signed) or the smallest (unsigned), an
  infinity as its scale; the scales come from the finite values, so every
  other element is stored as it is without them."""
  rng = np.random.default_rng(1)
  for signed, shape in ((True, (512,)), (False, (16, 32))):
    x = rng.standard_normal(shape).astype(np.float32)
    bad = (x if signed else np.abs(x)).reshape(-1)
    bad[[3, 300]] = [np.nan, np.inf]
    bad = bad.reshape(shape)
    clean = np.where(np.isfinite(bad), bad, 0)
    y = np.asarray(int4.quantize(jnp.asarray(bad), signed).dequantize()).reshape(-1)
    y_ref = np.asarray(int4.quantize(jnp.asarray(clean), signed).dequantize())
    finite = np.isfinite(bad).reshape(-1)
    np.testing.assert_array_equal(y[finite], y_ref.reshape(-1)[finite])
    if signed:
      scale = _blocks(np.abs(clean)).max(1)
      assert y[3] == 0 and y[300] == np.float32(scale[300 // BLOCK])
    else:
      scale = _rank1_scale(clean).reshape(-1)
      assert y[3] == np.float32(scale[3] / 16) and y[300] == np.float32(scale[300])


def _adam_step_f64(g, m, v, t, b1=0.9, b2=0.999, eps=1e-8):
  """Algorithm 1 of Kingma & Ba (2015), float64, on decoded moments, with
  adam_jax's documented step bound B_t (decoded moments need not keep it)."""
  m = b1 * m + (1 - b1) * g
  v = b2 * v + (1 - b2) * g * g
  u = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
  g_sum = sum((b1 * b1 / b2) ** k for k in range(t))
  bound = np.sqrt((1 - b1) ** 2 * (1 - b2**t) * g_sum / ((1 - b2) * (1 - b1**t) ** 2))
  bound *= 1 + 2.0**-12  # the documented rounding allowance (BOUND_SLACK)
  return np.clip(u, -bound, bound), m, v


def test_each_step_matches_float64_adam_on_the_decoded_moments():
  rng = np.random.default_rng(2)
  params = {"a": jnp.zeros((64, 96)), "b": jnp.zeros(5000), "c": jnp.zeros((3, 4, 512))}
  tx = adam_jax.scale_by_adam(mu_dtype="int4", nu_dtype="int4")
  state = tx.init(params)
  update = jax.jit(tx.update)
  for t in range(1, 6):
    grads = {
      k: jnp.asarray(rng.standard_normal(p.shape) * np.exp(rng.standard_normal()))
      for k, p in params.items()
    }
    grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
    u, new = update(grads, state)
    for k in params:
      m0 = np.asarray(state.mu[k].dequantize(), np.float64)
      v0 = np.asarray(state.nu[k].dequantize(), np.float64)
      u_ref, m_ref, v_ref = _adam_step_f64(np.asarray(grads[k], np.float64), m0, v0, t)
      np.testing.assert_allclose(np.asarray(u[k]), u_ref, rtol=2e-5, atol=1e-6)
      for got, want, signed in ((new.mu[k], m_ref, True), (new.nu[k], v_ref, False)):
        decoded, _ = _reference(want, signed)
        ours = np.asarray(got.dequantize(), np.float64)
        real = np.ones(ours.shape, bool)  # the blocks' padding is not stored
        if not got.rank1:
          ours, real = _blocks(ours), _blocks(real) > 0
        # The same codes as the float64 reference's, but for float32 ties.
        close = np.isclose(ours, decoded, rtol=1e-5, atol=1e-30)
        agree = np.mean(close[real])
        assert agree > 0.995, (k, signed, agree)
    state = new


def _state_bytes(state):
  """Bytes of the state's arrays, less its scalars (the step count)."""
  return sum(x.nbytes for x in jax.tree.leaves(state) if jnp.ndim(x))


def test_state_bytes_per_parameter_meet_the_targets():
  # The 4.2M-parameter transformer-like tree of the 8-bit storage's test.
  shapes = [(4096, 256)]
  for _ in range(4):
    shapes += [(256, 768), (256, 256), (256, 1024), (1024, 256), (256,), (256,)]
  params = {f"l{i:03d}": jnp.zeros(s) for i, s in enumerate(shapes)}
  n = sum(int(np.prod(s)) for s in shapes)
  assert n > 4_000_000
  per_param = {
    (mu, nu): _state_bytes(adam_jax.adam(mu_dtype=mu, nu_dtype=nu).init(params)) / n
    for mu, nu in (("int4", "int4"), ("int4", "factored"), ("int8", "factored"))
  }
  assert per_param["int4", "int4"] <= 1.1, per_param
  assert per_param["int4", "factored"] <= 0.6, per_param
  assert per_param["int8", "factored"] <= 1.1, per_param


def _grads_for(params, seed=3):
  rng = np.random.default_rng(seed)
  table = [
    jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
    for _ in range(8)
  ]
  return lambda k: table[k % len(table)]


def _train(tx, params, grads, steps):
  gradients = [grads(k) for k in range(steps)]
  return run_steps(jitted_step(tx), params, tx.init(params), gradients)


STORAGES = [("int4", "int4"), ("int4", "factored"), ("int8", "factored")]


@pytest.mark.parametrize("mu,nu", STORAGES)
@pytest.mark.parametrize(
  "wrap", ["inject_hyperparams", "multi_steps", "masked", "chain"]
)
def test_works_with_optax_wrappers(wrap, mu, nu):
  """Each wrapper runs the coded optimizer as it runs the float32 one: the
  same parameters when the moments are read back exactly (zero gradients
  after the first steps would hide nothing), and finite updates."""
  params = {"w": jnp.zeros((32, 256)), "b": jnp.zeros(8)}
  kw = {"mu_dtype": mu, "nu_dtype": nu}
  make = {
    "inject_hyperparams": lambda: optax.inject_hyperparams(
      adam_jax.adam, static_args=("int8_min_size",)
    )(0.01, **kw),
    "multi_steps": lambda: optax.MultiSteps(adam_jax.adam(0.01, **kw), 2),
    "masked": lambda: optax.masked(adam_jax.adam(0.01, **kw), {"w": True, "b": False}),
    "chain": lambda: optax.chain(
      optax.clip_by_global_norm(1.0), adam_jax.adam(0.01, **kw)
    ),
  }[wrap]
  plain = adam_jax.adam(0.01, **kw)
  grads = _grads_for(params)
  with optax_mode():  # optax's MultiSteps and masked promote int and float
    got, state = _train(make(), params, grads, 6)
  coded = [x for x in jax.tree.leaves(state, is_leaf=_is_coded) if _is_coded(x)]
  assert coded, "the large leaf's moments are coded inside the wrapper"
  if wrap in ("inject_hyperparams", "chain"):  # the same steps as the bare one
    steps = 6
    want, _ = _train(
      plain if wrap == "inject_hyperparams" else make(), params, grads, steps
    )
    # Float rounding (XLA fuses each program differently) only: a code that
    # flips at a tie would move an element by ~1e-3.
    np.testing.assert_allclose(got["w"], want["w"], rtol=1e-5, atol=2e-6)
  assert np.all(np.isfinite(np.asarray(got["w"])))
  assert np.abs(np.asarray(got["w"])).max() > 0


def _is_coded(x):
  return isinstance(
    x, (adam_jax.Int4Moment, adam_jax.FactoredMoment, adam_jax.QuantizedMoment)
  )


@pytest.mark.parametrize("mu,nu", STORAGES)
def test_nonfinite_step_is_skipped_bit_for_bit(mu, nu):
  params = {"w": jnp.zeros((16, 512))}
  tx = adam_jax.adam(0.01, mu_dtype=mu, nu_dtype=nu, skip_nonfinite=True)
  _, state = _train(tx, params, _grads_for(params), 3)
  bad = {"w": jnp.ones((16, 512)).at[3, 4].set(jnp.nan)}
  u, new = jax.jit(tx.update)(bad, state, params)
  assert not np.any(np.asarray(u["w"]))
  assert int(new[0].skipped) == 1
  new = new._replace(skipped=state[0].skipped) if hasattr(new, "_replace") else new
  for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(state), strict=True):
    if a.ndim:
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("mu,nu", STORAGES)
def test_orbax_round_trip_resumes_bit_identically(tmp_path, mu, nu):
  ocp = pytest.importorskip("orbax.checkpoint")
  params = {"w": jnp.zeros((32, 512)), "c": jnp.zeros((4, 8, 129)), "b": jnp.zeros(8)}
  tx = adam_jax.adam(0.01, mu_dtype=mu, nu_dtype=nu)
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


def test_small_leaves_are_packed_and_coded_leaves_keep_their_arrays(monkeypatch):
  from adam_jax._src import packing

  monkeypatch.setattr(packing, "PACK_MIN_LEAVES", 8)
  params = {f"s{i}": jnp.zeros(300) for i in range(8)} | {"w": jnp.zeros((64, 96))}
  packed = adam_jax.adam(0.01, mu_dtype="int4", nu_dtype="factored")
  plain = adam_jax.adam(
    0.01, mu_dtype="int4", nu_dtype="factored", pack_small_leaves=False
  )
  state = packed.init(params)
  assert isinstance(state[0].mu, adam_jax.PackedMoments)
  assert [type(x).__name__ for x in state[0].mu.own] == ["Int4Moment"]
  assert [type(x).__name__ for x in state[0].nu.own] == ["FactoredMoment"]
  grads = _grads_for(params)
  got, _ = _train(packed, params, grads, 4)
  want, _ = _train(plain, params, grads, 4)
  for k in params:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-7)


def test_state_from_another_storage_is_refused_naming_both():
  params = {"w": jnp.zeros((64, 64))}
  state = adam_jax.adam(mu_dtype="int8", nu_dtype="int8").init(params)
  with pytest.raises(ValueError, match=r"stored in int8 .* mu_dtype='int4'"):
    adam_jax.adam(mu_dtype="int4").update(params, state)
  state = adam_jax.adam(nu_dtype="int4").init(params)
  with pytest.raises(ValueError, match=r"stored in int4 .* nu_dtype='factored'"):
    adam_jax.adam(nu_dtype="factored").update(params, state)


def test_amsgrad_keeps_its_maximum_in_4_bits_and_never_below_v():
  """PyTorch's AMSGrad (``adam(amsgrad=True)``) stores ``nu_max`` like
  ``nu``; the maximum it reads back is at least the decoded ``v`` of the
  step (the rule takes the maximum before encoding)."""
  params = {"w": jnp.zeros((64, 128))}
  tx = adam_jax.adam(0.01, mu_dtype="int4", nu_dtype="int4", amsgrad=True)
  grads = _grads_for(params)
  _, state = _train(tx, params, grads, 5)
  nu, nu_max = state[0].nu["w"], state[0].nu_max["w"]
  assert isinstance(nu_max, adam_jax.Int4Moment) and not nu_max.signed
  v = np.asarray(nu.dequantize())
  v_max = np.asarray(nu_max.dequantize())
  # Both are coded from float32 values with v_max >= v; each decodes within
  # its scale's s/32 (or s/16 from below), so allow that much.
  slack = np.maximum(_rank1_scale(v), _rank1_scale(v_max)) / 16
  assert np.all(v_max >= v - slack)
