"""State layout on 8 devices: it follows the parameters (eager init, jitted
init, jitted step; every storage format), ZeRO-1 partitioning, per-device
bytes, trajectories against one device, Orbax save/restore across meshes."""

import contextlib

import jax
import jax.numpy as jnp
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import pytest

import adam_jax
from tests._jit import compiles
from tests.conftest import optax_mode

# Values per 8-bit block, and per 4-bit block (docs/guides/low_memory.md).
BLOCK = 256
BLOCK4 = 128
CODED = (adam_jax.QuantizedMoment, adam_jax.Int4Moment, adam_jax.FactoredMoment)


def _is_coded(x):
  """An 8-bit, 4-bit or factored moment: one state entry of several arrays."""
  return isinstance(x, CODED)


SHAPES = {
  "dense": {"kernel": (256, 1024), "bias": (1024,)},
  "out": {"kernel": (1024, 256), "bias": (256,)},
  "norm": {"scale": (256,)},
}
# Parameter layouts whose 8-bit blocks never straddle two devices. (No
# trailing None in a spec: jit's cache tells P("x", None) from the P("x") a
# step returns, and would compile the step a second time.)
LAYOUTS = {
  "1d": (
    (8,),
    ("data",),
    {
      "dense": {"kernel": P("data"), "bias": P("data")},
      "out": {"kernel": P("data"), "bias": P()},
      "norm": {"scale": P()},
    },
  ),
  "2d": (
    (4, 2),
    ("data", "model"),
    {
      "dense": {"kernel": P("data", "model"), "bias": P("model")},
      "out": {"kernel": P("model"), "bias": P()},
      "norm": {"scale": P()},
    },
  ),
}
FORMATS = {
  "float32": lambda: adam_jax.adam(0.01),
  "bf16": lambda: adam_jax.adam(0.01, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16),
  "int8": lambda: adam_jax.adam(0.01, mu_dtype="int8", nu_dtype="int8"),
  "int8_amsgrad_adamw": lambda: adam_jax.adamw(
    0.01, mu_dtype="int8", nu_dtype="int8", amsgrad=True, weight_decay=0.1
  ),
  "kahan_bf16_params": lambda: adam_jax.adam(0.01, param_rounding="kahan"),
  "average": lambda: adam_jax.adam(0.01, average_decay=0.9),
  "multisteps_int8": lambda: optax.MultiSteps(adam_jax.adam(0.01, mu_dtype="int8"), 2),
  # 4-bit first moment (blocks of 128) with a 4-bit rank-1 second moment (one
  # vector of maxima per axis), or with a factored one (row and column means).
  "int4": lambda: adam_jax.adam(0.01, mu_dtype="int4", nu_dtype="int4"),
  "int4_factored": lambda: adam_jax.adam(0.01, mu_dtype="int4", nu_dtype="factored"),
}
# The step tests' formats: "int8" alone adds nothing to "int8_amsgrad_adamw",
# whose two moments are 8-bit too.
STEP_FORMATS = [fmt for fmt in FORMATS if fmt != "int8"]
# State fields that hold one entry per parameter.
PER_PARAM = ("mu", "nu", "nu_max", "compensation", "average", "acc_grads")
COLLECTIVES = ("all-gather", "all-to-all", "collective-permute")


def _mesh(name, axis_type=AxisType.Auto):
  shape, names, _ = LAYOUTS[name]
  return jax.make_mesh(shape, names, axis_types=(axis_type,) * len(names))


def _params(fmt, seed=0):
  dtype = jnp.bfloat16 if fmt == "kahan_bf16_params" else jnp.float32
  rng = np.random.default_rng(seed)
  return jax.tree.map(
    lambda s: jnp.asarray(rng.standard_normal(s), dtype),
    SHAPES,
    is_leaf=lambda x: isinstance(x, tuple),
  )


def _specs(name):
  return LAYOUTS[name][2]


def _shardings(mesh, specs):
  return jax.tree.map(
    lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P)
  )


def _grads(params, k):
  """Step ``k``'s gradients, placed like ``params``: fixed numbers computed
  on the host, so the one-device reference gets the very same ones (XLA may
  round a parameter update differently, by an ulp, when it compiles the step
  per shard, and gradients computed from the parameters would carry that
  into the moments)."""
  rng = np.random.default_rng(100 + k)

  def grad(p):
    g = rng.standard_normal(p.shape) * np.linspace(0.01, 1.0, p.shape[-1])
    return jax.device_put(g.astype(p.dtype), p.sharding)

  return jax.tree.map(grad, params)


def _mode(fmt):
  return optax_mode() if fmt.startswith("multisteps") else contextlib.nullcontext()


def _step(tx):
  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  return step


def _per_param(state, params):
  """``(field, param path, entry)`` for every per-parameter state entry."""
  keys = [
    jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(params)
  ]
  out = []
  for field in PER_PARAM:
    for tree in optax.tree.get_all_with_path(state, field):
      entries = jax.tree.leaves(tree[1], is_leaf=_is_coded)
      if not entries:  # a field that is off (e.g. nu_max without amsgrad)
        continue
      assert len(entries) == len(keys), field
      out += [(field, k, e) for k, e in zip(keys, entries, strict=True)]
  return out


def _same(a, b, ndim):
  return a.is_equivalent_to(b, ndim)


def _coded_shards(x, shard):
  """``[(array, its shard's shape)]`` for coded moment ``x`` of a parameter
  whose shard is ``shard`` (blocks whole on each device): 8-bit codes as the
  parameter and one scale per block; 4-bit codes with the last axis halved,
  one scale per block or (rank-1) each axis' maxima; factored statistics as
  the parameter without the axis each is a mean over."""
  last = (*shard[:-1],)
  if isinstance(x, adam_jax.QuantizedMoment):
    return [(x.codes, shard), (x.scales, (*last, shard[-1] // BLOCK))]
  if isinstance(x, adam_jax.Int4Moment):
    if x.rank1:
      scales = [(s, (shard[a],)) for s, a in zip(x.scales, _long_axes(x), strict=True)]
    else:
      scales = [(x.scales[0], (*last, shard[-1] // BLOCK4))]
    return [(x.codes, (*last, shard[-1] // 2)), *scales]
  a, b = x.axes
  return [(x.row, shard[:b] + shard[b + 1 :]), (x.col, shard[:a] + shard[a + 1 :])]


def _long_axes(x):
  return [a for a, n in enumerate(x.shape) if n > 1]


def _vectors(x):
  """Whether ``x`` is kept as one vector per axis (a rank-1 4-bit or a
  factored second moment)."""
  rank1 = isinstance(x, adam_jax.Int4Moment) and x.rank1
  return rank1 or isinstance(x, adam_jax.FactoredMoment)


def _assert_follows(state, params, label):
  """Every per-parameter entry is laid out like its parameter (coded ones:
  each array holds the values of its parameter's shard on each device)."""
  by_path = {
    jax.tree_util.keystr(k): p for k, p in jax.tree_util.tree_leaves_with_path(params)
  }
  entries = _per_param(state, params)
  assert entries, label
  for field, path, x in entries:
    p = by_path[path]
    if _is_coded(x):
      shard = p.addressable_shards[0].data.shape
      for array, want in _coded_shards(x, shard):
        for s in array.addressable_shards:
          assert s.data.shape == want, (label, field, path, array.sharding)
      if not isinstance(x, adam_jax.FactoredMoment):
        assert _same(x.codes.sharding, p.sharding, p.ndim), (label, field, path)
    else:
      assert _same(x.sharding, p.sharding, p.ndim), (label, field, path, x.sharding)


def _assert_shardings_equal(state, shardings, label):
  leaves, expected = jax.tree.leaves(state), jax.tree.leaves(shardings)
  assert len(leaves) == len(expected), label
  for x, s in zip(leaves, expected, strict=True):
    assert _same(x.sharding, s, x.ndim), (label, x.shape, x.sharding, s)


def _reference(tx, params, steps):
  """The same run on one device."""
  dev = jax.devices()[0]
  p = jax.device_put(jax.tree.map(np.asarray, params), dev)
  s = tx.init(p)
  step = jax.jit(_step(tx))
  for k in range(steps):
    p, s = step(p, s, _grads(p, k))
  return p, s


def _assert_close(a, b, label):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6, err_msg=label)


def _device_bytes(tree):
  """Bytes of ``tree`` on device 0 (the shards it holds)."""
  dev = jax.devices()[0]
  return sum(
    s.data.nbytes
    for x in jax.tree.leaves(tree)
    for s in x.addressable_shards
    if s.device == dev
  )


def _total_bytes(tree):
  return sum(x.nbytes for x in jax.tree.leaves(tree))


# Every format on the 2-D mesh; on the 1-D one, where 8 devices split a
# kernel's rows and so its 8-bit blocks, the formats with 8-bit moments.
FOLLOW_CASES = [("2d", fmt) for fmt in STEP_FORMATS] + [
  ("1d", fmt) for fmt in STEP_FORMATS if "int8" in fmt
]


@pytest.mark.parametrize(("layout", "fmt"), FOLLOW_CASES)
def test_state_follows_its_parameters(layout, fmt):
  """Eager init, jitted init and jitted steps lay each state entry out like
  its parameter, as ``state_shardings`` says, with no gathers in the step;
  the trajectory equals the one-device one."""
  mesh = _mesh(layout)
  tx = FORMATS[fmt]()
  params = jax.device_put(_params(fmt), _shardings(mesh, _specs(layout)))
  with _mode(fmt):
    expected = adam_jax.state_shardings(tx, params)
    eager = tx.init(params)
    jitted = jax.jit(tx.init)(params)
    _assert_follows(eager, params, "eager")
    _assert_follows(jitted, params, "jit")
    for label, state in (("eager", eager), ("jit", jitted)):
      for x, s in zip(jax.tree.leaves(state), jax.tree.leaves(expected), strict=True):
        if x.ndim:  # scalars: replicated or on one device, both fine
          assert _same(x.sharding, s, x.ndim), (label, x.shape, x.sharding, s)
    step = jax.jit(_step(tx))
    hlo = step.lower(params, eager, _grads(params, 0)).compile().as_text()
    assert not [c for c in COLLECTIVES if c in hlo], fmt
    p, s = step(params, eager, _grads(params, 0))
    with compiles() as compiled:
      for k in range(1, 3):
        p, s = step(p, s, _grads(p, k))
    if not fmt.startswith("multisteps"):  # optax's own counters move
      assert not compiled, f"{len(compiled)} compilations after the first step"
    _assert_follows(s, params, "step")
    _assert_shardings_equal(p, jax.tree.map(lambda x: x.sharding, params), "params")
    ref_p, ref_s = _reference(tx, params, 3)
  if fmt == "kahan_bf16_params":
    # XLA rounds a float32 update by an ulp differently per shard now and
    # then (measured: 10,712 of 262,144 float32 parameters one ulp apart after
    # 3 steps). A bf16 parameter at a rounding tie then lands on the other
    # neighbour: allow 1 in 10,000 elements one bf16 ulp off.
    # Its compensation then differs by about that ulp.
    for field in ("mu", "nu"):
      _assert_close(optax.tree.get(s, field), optax.tree.get(ref_s, field), field)
    c, ref_c = (optax.tree.get(x, "compensation") for x in (s, ref_s))
    for x, y, cx, cy in zip(*map(jax.tree.leaves, (p, ref_p, c, ref_c)), strict=True):
      x, y, cx, cy = (np.asarray(a, np.float64) for a in (x, y, cx, cy))
      ulp = 2.0**-7 * np.abs(y) + 1e-6
      for a, b in ((x, y), (cx, cy)):
        off = ~np.isclose(a, b, rtol=1e-6, atol=1e-6)
        assert off.mean() <= 1e-4, off.mean()
        assert np.all(np.abs(a - b) <= ulp), np.max(np.abs(a - b) / ulp)
    return
  _assert_close(p, ref_p, "params")
  _assert_close(s, ref_s, "state")


def test_same_shaped_parameters_keep_their_own_layouts():
  """Under jit, init ties each moment to its own parameter: two parameters
  of one shape laid out differently, and a vector of the shape of their
  statistics laid out a third way, keep their own layouts."""
  mesh = _mesh("2d")
  specs = {"a": P("data", "model"), "b": P(), "v": P("model")}
  shapes = {"a": (64, 1024), "b": (64, 1024), "v": (64,)}
  params = {
    k: jax.device_put(jnp.ones(shapes[k]), NamedSharding(mesh, specs[k])) for k in specs
  }
  for fmt in ("int4", "int4_factored"):
    tx = FORMATS[fmt]()
    state = jax.jit(tx.init)(params)
    _assert_follows(state, params, fmt)
    expected = adam_jax.state_shardings(tx, params)
    for x, want in zip(jax.tree.leaves(state), jax.tree.leaves(expected), strict=True):
      assert _same(x.sharding, want, x.ndim), (fmt, x.shape, x.sharding, want)


@pytest.mark.parametrize(
  ("axis_type", "nu_dtype"),
  [
    (AxisType.Auto, "int8"),
    (AxisType.Explicit, "int8"),
    (AxisType.Explicit, "int4"),
    (AxisType.Explicit, "factored"),
  ],
)
def test_any_layout_works(axis_type, nu_dtype):
  """Blocks that straddle devices (a split block axis, merged trailing axes)
  and explicit mesh axes: still laid out like the parameter, still the
  one-device trajectory. 8-bit moments, or a 4-bit first moment with a
  4-bit (rank-1: three vectors of maxima for the 3-D parameter) or a
  factored second moment."""
  mesh = _mesh("2d", axis_type)
  specs = {
    "split_blocks": P(None, ("data", "model")),  # 64 values of 512 per device
    "merged": P("data", "model"),  # blocks run over the last two axes
    "aligned": P("data", "model"),
  }
  shapes = {"split_blocks": (64, 512), "merged": (64, 16, 16), "aligned": (256, 1024)}
  rng = np.random.default_rng(1)
  params = {
    k: jax.device_put(
      jnp.asarray(rng.standard_normal(shapes[k]), jnp.float32),
      NamedSharding(mesh, specs[k]),
    )
    for k in shapes
  }
  mu_dtype = "int8" if nu_dtype == "int8" else "int4"
  tx = adam_jax.adam(0.01, mu_dtype=mu_dtype, nu_dtype=nu_dtype, int8_min_size=256)
  expected = adam_jax.state_shardings(tx, params)
  for state in (tx.init(params), jax.jit(tx.init)(params)):
    _assert_shardings_equal(state, expected, "init")
  step = jax.jit(_step(tx))
  p, s = params, tx.init(params)
  for k in range(3):
    p, s = step(p, s, _grads(p, k))
  _assert_shardings_equal(s, expected, "step")
  ref_p, ref_s = _reference(tx, params, 3)
  _assert_close(p, ref_p, "params")
  _assert_close(s, ref_s, "state")


@pytest.mark.parametrize(
  ("layout", "fmt"),
  [
    ("2d", "float32"),
    ("2d", "bf16"),
    ("2d", "int8_amsgrad_adamw"),
    ("1d", "int8_amsgrad_adamw"),
    # 4-bit codes and blocks, and per-axis vectors (a rank-1 4-bit second
    # moment's are split the same way: test_step_layout.py)
    ("2d", "int4_factored"),
  ],
)
def test_zero1_partitions_replicated_state(layout, fmt):
  """Parameters replicated over "data": the partitioned state holds 1/N of
  each per-parameter entry per device, the parameters stay replicated, and
  the trajectory equals the one-device one."""
  mesh = _mesh(layout)
  n = mesh.shape["data"]
  specs = jax.tree.map(
    lambda s: P(*[None if e == "data" else e for e in s]),
    _specs(layout),
    is_leaf=lambda x: isinstance(x, P),
  )
  p_sh = _shardings(mesh, specs)
  tx = FORMATS[fmt]()
  params = jax.device_put(_params(fmt), p_sh)
  plain = jax.jit(tx.init)(params)
  shardings = adam_jax.state_shardings(tx, params, partition="data")
  state = jax.jit(tx.init, out_shardings=shardings)(params)
  _assert_shardings_equal(state, shardings, "init")
  entries = _per_param(state, params)
  mine = [e for _, _, e in entries if not _vectors(e)]
  whole = [e for _, _, e in _per_param(plain, params) if not _vectors(e)]
  # every entry here has a dimension that "data" divides evenly
  assert _device_bytes(mine) * n == _device_bytes(whole)
  # Per-axis vectors follow the parameter as split over "data" (as a float
  # moment is), as a step computes them: only the split axis' vector is split.
  split = adam_jax.state_shardings(adam_jax.adam(0.01), params, partition="data")
  by_path = {
    jax.tree_util.keystr(k): sh
    for k, sh in jax.tree_util.tree_leaves_with_path(split[0].mu)
  }
  for field, path, x in entries:
    if _vectors(x):
      shard = by_path[path].shard_shape(x.shape)
      for array, want in _coded_shards(x, shard):
        assert array.addressable_shards[0].data.shape == want, (field, path)
  step = jax.jit(
    _step(tx), in_shardings=(p_sh, shardings, p_sh), out_shardings=(p_sh, shardings)
  )
  p, s = params, state
  for k in range(3):
    p, s = step(p, s, jax.device_put(_grads(p, k), p_sh))
  _assert_shardings_equal(s, shardings, "step")
  _assert_shardings_equal(p, p_sh, "params")
  ref_p, ref_s = _reference(tx, params, 3)
  _assert_close(p, ref_p, "params")
  _assert_close(s, ref_s, "state")


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_per_device_bytes_by_layout(layout, capsys):
  """Replicated: every device holds the whole state; sharded over all 8
  devices (the 2-D mesh: over both axes): an eighth; replicated and
  partitioned over "data" (ZeRO-1): 1/8 on the 1-D mesh, 1/4 on the 2-D."""
  mesh = _mesh(layout)
  params = _params("int8")
  rep = NamedSharding(mesh, P())
  split = NamedSharding(mesh, P(mesh.axis_names))
  for fmt in ("float32", "bf16", "int8"):
    tx = FORMATS[fmt]()
    replicated = tx.init(jax.device_put(params, rep))
    sharded = tx.init(jax.device_put(params, split))
    zero_sh = adam_jax.state_shardings(tx, params, rep, partition="data")
    zero = jax.jit(tx.init, out_shardings=zero_sh)(jax.device_put(params, rep))
    total = _total_bytes(replicated)
    got = [_device_bytes(s) for s in (replicated, sharded, zero)]
    print(f"{fmt}: total {total} B; per device {got}")
    assert got[0] == total
    # the count (4 bytes) is replicated
    for per_device, pieces in zip(got[1:], (8, mesh.shape["data"]), strict=True):
      assert total - pieces <= per_device * pieces <= total + pieces * 4
  print(capsys.readouterr().out)


# Not "int4_factored": a factored moment's statistics are means, sums whose
# order follows the layout, so a run resumed on another mesh is not bit for
# bit (float32 rounding); its 4-bit first moment is in "int4".
@pytest.mark.parametrize("fmt", [fmt for fmt in STEP_FORMATS if "factored" not in fmt])
def test_orbax_restore_onto_another_mesh(tmp_path, fmt):
  """Saved from the 1-D mesh, restored onto the 2-D mesh (laid out as
  ``state_shardings`` says there) and onto the same mesh: equal values, and
  resuming continues the trajectory bit for bit."""
  ocp = pytest.importorskip("orbax.checkpoint")
  tx = FORMATS[fmt]()
  with _mode(fmt):
    meshes = {name: _mesh(name) for name in LAYOUTS}
    placed = {
      name: jax.device_put(_params(fmt), _shardings(meshes[name], _specs(name)))
      for name in LAYOUTS
    }
    step = jax.jit(_step(tx))
    p, s = placed["1d"], tx.init(placed["1d"])
    for k in range(2):
      p, s = step(p, s, _grads(p, k))
    with ocp.StandardCheckpointer() as ckpt:
      ckpt.save(tmp_path / "ckpt", {"params": p, "state": s})
    runs = {}
    for name in LAYOUTS:
      p_sh = jax.tree.map(lambda x: x.sharding, placed[name])
      target = {
        "params": jax.tree.map(
          lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
          placed[name],
          p_sh,
        ),
        "state": jax.tree.map(
          lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
          jax.eval_shape(tx.init, placed[name]),
          adam_jax.state_shardings(tx, placed[name]),
        ),
      }
      with ocp.StandardCheckpointer() as ckpt:
        restored = ckpt.restore(tmp_path / "ckpt", target)
      _assert_shardings_equal(
        restored, jax.tree.map(lambda x: x.sharding, target), f"restore {name}"
      )
      for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves((p, s)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
      rp, rs = restored["params"], restored["state"]
      for k in range(2, 4):
        rp, rs = step(rp, rs, _grads(rp, k))
      runs[name] = (rp, rs)
    for k in range(2, 4):
      p, s = step(p, s, _grads(p, k))
  for name, run in runs.items():
    for a, b in zip(jax.tree.leaves(run), jax.tree.leaves((p, s)), strict=True):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)
