"""The packed fast path (``pack_small_leaves=True``, the default) computes what
the per-leaf path computes.

Every option of the API runs on a tree with many small leaves of mixed dtypes
(float32, bfloat16, float16, complex64), None leaves, 0-d leaves and two large
leaves, packed and unpacked, under ``jit``; updates and moments must agree to
4 ulp of each leaf's largest element: XLA may contract a multiply-add into an
FMA differently in a chunk's kernel than in a leaf's, and the weight decay's
sum adds a rounding (the largest seen is 3 ulp, in the weight-decay cases; most
elements are bitwise equal).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from adam_jax._src import packing
from tests.conftest import optax_mode

STEPS = 4


def many_leaf_tree(seed: int, kinds=("f32", "bf16", "f16", "c64"), layers=8, big=None):
  """A nested tree with 3 small leaves per layer and kind (8 layers: 24 per
  kind, 72 or more in all: packed), None and 0-d leaves, and two large leaves
  (``big``'s shapes; by default above ``PACK_BELOW``: own moment arrays)."""
  rng = np.random.RandomState(seed)
  dtypes = {
    "f32": jnp.float32,
    "bf16": jnp.bfloat16,
    "f16": jnp.float16,
    "c64": jnp.complex64,
  }

  def leaf(shape, kind):
    x = rng.randn(*shape)
    if kind == "c64":
      x = x + 1j * rng.randn(*shape)
    return jnp.asarray(x, dtypes[kind])

  tree = {}
  for kind in kinds:
    stack = []
    for i in range(layers):
      shape = [(3, 5), (7,), (), (2, 2, 2)][i % 4]
      stack.append(
        {"w": leaf(shape, kind), "b": leaf((4,), kind), "skip": None}
        | ({"norm": [leaf((3,), kind), leaf((1,), kind)]} if i % 2 else {})
      )
    tree[kind] = stack
  kernel, emb = big or ((300, 256), (70000,))
  tree["big"] = {"kernel": leaf(kernel, "f32"), "emb": leaf(emb, "f32")}
  return tree


@pytest.fixture
def small_thresholds(monkeypatch):
  """The packing thresholds scaled down (pack from 8 small leaves, 4 leaves
  a chunk, below 512 elements), so that a 2-layer tree exercises what a
  large one does (several chunks per dtype, None and 0-d leaves, own arrays)
  at a fraction of the compile time."""
  monkeypatch.setattr(packing, "PACK_MIN_LEAVES", 8)
  monkeypatch.setattr(packing, "CHUNK_LEAVES", 4)
  monkeypatch.setattr(packing, "PACK_BELOW", 512)
  return {"layers": 2, "big": ((30, 20), (700,))}


def gradients(params, step):
  rng = np.random.RandomState(100 + step)

  def g(p):
    scale = 10.0 ** rng.uniform(-3, 1)
    x = rng.randn(*p.shape) * scale
    if jnp.iscomplexobj(p):
      x = x + 1j * rng.randn(*p.shape) * scale
    return jnp.asarray(x, p.dtype)

  return jax.tree.map(g, params)


def assert_close_ulp(a, b, ulps=4, what="", scale=None):
  """Every element within ``ulps`` units in the last place (in a's dtype) of
  its leaf's largest element (or of the largest element of ``scale``'s leaf,
  e.g. the previous state, whose terms the new value sums)."""
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb), what
  assert jax.tree.structure(a) == jax.tree.structure(b), what
  if scale == "dtype":  # the largest element of any leaf of the same dtype
    peak: dict = {}
    for x in la + lb:
      if jnp.issubdtype(x.dtype, jnp.inexact) and x.size:
        m = float(np.max(np.abs(np.asarray(x).astype(np.complex128))))
        peak[x.dtype] = max(peak.get(x.dtype, 0.0), m)
    ls = [np.asarray(peak.get(x.dtype, 0.0)) for x in la]
  else:
    ls = [None] * len(la) if scale is None else jax.tree.leaves(scale)
  for x, y, z in zip(la, lb, ls, strict=True):
    assert x.dtype == y.dtype and x.shape == y.shape, what
    if not jnp.issubdtype(x.dtype, jnp.inexact):
      np.testing.assert_array_equal(x, y, err_msg=what)
      continue
    info = jnp.finfo(x.dtype)
    wide = np.complex128 if jnp.iscomplexobj(x) else np.float64
    x64, y64 = np.asarray(x).astype(wide), np.asarray(y).astype(wide)
    for part in (np.real, np.imag) if np.iscomplexobj(x64) else (np.real,):
      u, v = part(x64), part(y64)
      assert np.array_equal(np.isnan(u), np.isnan(v)), what
      ok = ~np.isnan(u)
      # Units in the last place of the leaf's largest element: where a moment
      # cancels (b1 m and (1 - b1) g of opposite signs) XLA may contract the
      # multiply-add into an FMA in one kernel and not in another, and that
      # rounding of the terms is many ulps of the small result.
      biggest = np.max(np.maximum(np.abs(u), np.abs(v))[ok], initial=0.0)
      if z is not None:  # the terms of the new value: e.g. b1 m_{t-1}
        biggest = max(biggest, np.max(np.abs(part(np.asarray(z).astype(wide)))))
      _, exponent = np.frexp(biggest)
      ulp = np.ldexp(1.0, np.maximum(exponent - 1, info.minexp) - info.nmant)
      diff = np.abs(u[ok] - v[ok])
      assert np.all(diff <= ulps * ulp), (
        f"{what}: {np.max(diff / ulp):.1f} ulp apart (max {ulps})"
      )


def _decay_mask(params):
  return jax.tree.map(lambda p: p.ndim > 1, params)


MIXED = ("f32", "bf16", "f16", "c64")
REAL = ("f32", "bf16", "f16")

# (id, factory(pack) -> transformation, tree kinds, needs params, steps with NaN)
CASES = [
  ("adam", lambda k: adam_jax.adam(0.05, **k), MIXED),
  (
    "adam-nesterov-amsgrad",
    lambda k: adam_jax.adam(0.05, nesterov=True, amsgrad=True, **k),
    MIXED,
  ),
  (
    "adam-eps_hat-no-bias-correction-maximize",
    lambda k: adam_jax.adam(
      0.05, eps_hat=True, eps=1e-3, bias_correction=False, maximize=True, **k
    ),
    MIXED,
  ),
  ("adam-eps_root", lambda k: adam_jax.adam(0.05, eps_root=1e-6, eps=0.0, **k), MIXED),
  (
    "adam-coupled-decay-schedule-mask-fn",
    lambda k: adam_jax.adam(
      optax.linear_schedule(0.1, 0.01, 5),
      weight_decay=optax.linear_schedule(0.2, 0.0, 5),
      mask=_decay_mask,
      **k,
    ),
    MIXED,
  ),
  (
    "adam-bf16-state",
    lambda k: adam_jax.adam(0.05, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16, **k),
    REAL,
  ),
  (
    "adam-f32-state",
    lambda k: adam_jax.adam(0.05, mu_dtype=jnp.float32, nu_dtype=jnp.float16, **k),
    REAL,
  ),
  (
    "adam-skip_nonfinite-average",
    lambda k: adam_jax.adam(
      0.05, skip_nonfinite=True, average_decay=0.9, average_mode="keras", **k
    ),
    MIXED,
  ),
  (
    "adamw-amsgrad-mask-decouple_lr",
    lambda k: adam_jax.adamw(
      0.05, weight_decay=0.1, mask=_decay_mask, decouple_lr=True, amsgrad=True, **k
    ),
    MIXED,
  ),
  ("nadamw", lambda k: adam_jax.nadamw(0.05, weight_decay=0.3, **k), MIXED),
  ("amsgrad", lambda k: adam_jax.amsgrad(0.05, bias_correction_mu=False, **k), MIXED),
  ("adamax", lambda k: adam_jax.adamax(0.05, weight_decay=0.1, **k), REAL),
  ("scale_by_adam", lambda k: adam_jax.scale_by_adam(weight_decay=0.01, **k), MIXED),
  (
    "inject_hyperparams-adamw",
    lambda k: optax.inject_hyperparams(
      lambda learning_rate, b1, b2, eps, weight_decay: adam_jax.adamw(
        learning_rate, b1, b2, eps, weight_decay=weight_decay, **k
      )
    )(learning_rate=0.05, b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.1),
    REAL,  # optax makes the hyperparameters complex for complex params
  ),
  (
    "MultiSteps",
    lambda k: optax.MultiSteps(adam_jax.adam(0.05, **k), every_k_schedule=2),
    REAL,  # optax's MultiSteps casts complex to real (a DeprecationWarning)
  ),
  (
    "apply_if_finite",
    lambda k: optax.apply_if_finite(adam_jax.adam(0.05, **k), 3),
    MIXED,
  ),
]
CASES_BY_NAME = {name: factory for name, factory, _ in CASES}


def _repack(packed_like, state):
  """``state`` (per-leaf layout) stored in ``packed_like``'s layout."""

  def pack(node, tree):
    if not packing.is_packed(node):
      return tree
    leaves = node.layout.treedef.flatten_up_to(tree)
    own = [
      x
      for x, slot in zip(leaves, node.layout.slots, strict=True)
      if x is not None and slot is None
    ]
    chunks = [  # concatenated in NumPy: no compilation per chunk's shapes
      jnp.asarray(
        np.concatenate([np.ravel(leaves[i]) for i, _ in node.layout.members(c)])
      )
      for c in range(len(node.chunks))
    ]
    return adam_jax.PackedMoments(node.layout, tuple(own), tuple(chunks))

  return jax.tree.map(pack, packed_like, state, is_leaf=packing.is_packed)


def _compare_steps(name, packed_tx, plain_tx, params, bad_step=None):
  """Steps the per-leaf optimizer along a trajectory and, at every step, the
  packed one from the same state: each step's results must agree."""
  plain_step, packed_step = jax.jit(plain_tx.update), jax.jit(packed_tx.update)
  packed_like = packed_tx.init(params)
  state = plain_tx.init(params)
  assert_close_ulp(_unpacked(packed_like), state, ulps=0, what=f"{name} init")
  for t in range(STEPS):
    grads = gradients(params, t)
    if t == bad_step:
      grads = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan), grads)
    u, new_state = plain_step(grads, state, params)
    packed_u, packed_state = packed_step(grads, _repack(packed_like, state), params)
    assert jax.tree.structure(packed_state) == jax.tree.structure(packed_like)
    # Updates: ulps of the step's largest update (of that dtype), as in
    # test_optax_differential: an update that nearly cancels (Adam's step
    # against the decoupled decay) is many ulps of itself.
    assert_close_ulp(packed_u, u, what=f"{name} update {t}", scale="dtype")
    assert_close_ulp(
      _unpacked(packed_state), new_state, what=f"{name} state {t}", scale=state
    )
    params = jax.tree.map(lambda p, d: (p + d).astype(p.dtype), params, u)
    state = new_state
  return packed_like


def _unpacked(state):
  return jax.tree.map(
    lambda x: x.unpack() if packing.is_packed(x) else x,
    state,
    is_leaf=packing.is_packed,
  )


@pytest.mark.parametrize("name,factory,kinds", CASES, ids=[c[0] for c in CASES])
def test_packed_equals_per_leaf(name, factory, kinds, small_thresholds):
  params = many_leaf_tree(0, kinds, **small_thresholds)
  _check_packed_equals_per_leaf(name, factory, params)


def test_packed_equals_per_leaf_at_the_default_thresholds():
  _check_packed_equals_per_leaf(
    "adamw",
    CASES_BY_NAME["adamw-amsgrad-mask-decouple_lr"],
    many_leaf_tree(0, MIXED),
  )


def _check_packed_equals_per_leaf(name, factory, params):
  with optax_mode():
    bad = 2 if "skip" in name or "if_finite" in name else None
    packed_like = _compare_steps(
      name, factory({}), factory({"pack_small_leaves": False}), params, bad
    )
  # The fast path really ran: some moment is packed, in more than one chunk.
  packed = [
    x
    for x in jax.tree.leaves(packed_like, is_leaf=packing.is_packed)
    if packing.is_packed(x)
  ]
  assert packed and len(packed[0].chunks) > 1


def test_layout_rules():
  tx = adam_jax.scale_by_adam()
  few = {f"b{i:02d}": jnp.ones(3) for i in range(packing.PACK_MIN_LEAVES - 1)}
  state = tx.init(few)
  assert isinstance(state.mu, dict)  # too few small leaves: optax's layout
  many = {f"b{i:03d}": jnp.ones(3) for i in range(2 * packing.CHUNK_LEAVES + 1)}
  many["big"] = jnp.ones((packing.PACK_BELOW,))
  many["none"] = None
  state = tx.init(many)
  assert isinstance(state.mu, adam_jax.PackedMoments)
  assert len(state.mu.chunks) == 3  # 65 leaves, at most 32 per chunk
  assert [c.size for c in state.mu.chunks] == [96, 96, 3]
  assert len(state.mu.own) == 1 and state.mu.own[0].shape == (packing.PACK_BELOW,)
  # The packed moment stands for the tree: unpack, index, abstract shapes.
  tree = state.mu.unpack()
  assert jax.tree.structure(tree) == jax.tree.structure(many)
  assert state.mu["b010"].shape == (3,) and state.mu["none"] is None
  assert jax.tree.map(lambda s: s.shape, state.mu.abstract()) == jax.tree.map(
    jnp.shape, many
  )
  # Groups: leaves of unlike dtypes never share a chunk.
  mixed = {f"a{i:02d}": jnp.ones(2, jnp.float32) for i in range(40)}
  mixed |= {f"h{i:02d}": jnp.ones(2, jnp.bfloat16) for i in range(40)}
  state = tx.init(mixed)
  dtypes = [str(c.dtype) for c in state.mu.chunks]  # 32 + 8 leaves of each
  assert sorted(dtypes) == ["bfloat16"] * 2 + ["float32"] * 2
  assert str(state.nu.chunks[0].dtype) == "float32"  # nu of bf16: its dtype
  # init under jit and eval_shape give the same structure.
  assert jax.tree.structure(jax.jit(tx.init)(many)) == jax.tree.structure(tx.init(many))
  assert jax.tree.structure(jax.eval_shape(tx.init, many)) == jax.tree.structure(
    tx.init(many)
  )
  # A state stored either way works with either optimizer (same numbers).
  plain_tx = adam_jax.adam(0.1, pack_small_leaves=False)
  packed_tx = adam_jax.adam(0.1)
  grads = jax.tree.map(lambda p: 0.5 * p, many)
  u1, _ = packed_tx.update(grads, plain_tx.init(many), many)
  u2, _ = plain_tx.update(grads, packed_tx.init(many), many)
  assert_close_ulp(u1, u2, ulps=0)


def test_no_recompile_and_wrong_state_named():
  params = many_leaf_tree(1, ("f32",))
  tx = adam_jax.adam(0.1)
  state = tx.init(params)
  grads = gradients(params, 0)
  step = jax.jit(chex.assert_max_traces(tx.update, n=1))
  for _ in range(3):
    _, state = step(grads, state, params)
  other = dict(params, big={"kernel": params["big"]["kernel"][:10]})
  with pytest.raises(ValueError, match=r"\['big'\]\['kernel'\]"):
    tx.update(jax.tree.map(jnp.zeros_like, other), state, other)


def test_unlike_gradient_precision_in_one_chunk(x64):
  """float64 gradients for some float32 parameters of a chunk: that chunk is
  stepped leaf by leaf, as the per-leaf path does."""
  params = {f"p{i:02d}": jnp.ones(4, jnp.float32) * (i + 1) for i in range(70)}
  grads = {k: v * 0.3 for k, v in params.items()}
  grads["p03"] = grads["p03"].astype(jnp.float64)
  for pack in (True, False):
    tx = adam_jax.adam(0.1, pack_small_leaves=pack)
    u, s = tx.update(grads, tx.init(params), params)
    if pack:
      packed_u, packed_s = u, _unpacked(s)
    else:
      plain_u, plain_s = u, s
  assert packed_u["p03"].dtype == jnp.float64
  assert_close_ulp(packed_u, plain_u, ulps=0)
  assert_close_ulp(packed_s, plain_s, ulps=0)
