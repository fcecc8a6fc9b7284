"""``adam_jax._src.serialization``: every state type adam_jax defines passes
through ``jax.export`` as a pytree.

A jitted ``update`` taking and returning the state (not flat lists of its
leaves) is exported, serialized, deserialized and called: it computes the
same updates and states, bit for bit, as the jitted update itself, and the
state keeps its structure (8-bit moments, packed moments, adam_jax's and
optax's NamedTuple states). Every alias, and bf16 and 8-bit storage, are
exported this way: each step is plain StableHLO (no custom call).
"""

import collections
import importlib
import sys

import jax
from jax import export
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax

STEPS = 3


def _small_and_large(dtype=jnp.float32):
  """70 small leaves of 8-bit size (packed: fewer than 2**16 elements) and a
  large one (its own moment arrays)."""
  params = {
    f"b{i:02d}": jnp.linspace(-1.0, 1.0, 300, dtype=dtype) * (i + 1) for i in range(70)
  }
  params["w"] = jnp.linspace(-2.0, 2.0, 256 * 256, dtype=dtype).reshape(256, 256)
  return params


def _small(dtype=jnp.float32):
  return {"a": jnp.linspace(-1.0, 1.0, 6, dtype=dtype), "b": [jnp.ones((2, 3), dtype)]}


def _check_int8_packed(state):
  mu = state[0].mu
  assert isinstance(mu, adam_jax.PackedMoments)
  assert all(isinstance(c, adam_jax.QuantizedMoment) for c in mu.chunks)
  assert len(mu.own) == 1 and isinstance(mu.own[0], adam_jax.QuantizedMoment)


def _check_default(state):
  assert isinstance(state[0], optax.ScaleByAdamState)
  assert isinstance(state[1], optax.EmptyState)


def _check_skip_amsgrad(state):
  assert isinstance(state[0], adam_jax.ScaleByAmsgradSkipState)


def _check_kahan_average(state):
  assert isinstance(state[2], adam_jax.KahanState)
  assert isinstance(state[3], adam_jax.ParamAverageState)


CASES = {
  "int8-packed": (
    lambda: adam_jax.adam(1e-2, mu_dtype="int8", nu_dtype="int8", int8_min_size=256),
    _small_and_large,
    _check_int8_packed,
  ),
  "default": (lambda: adam_jax.adam(1e-2), _small, _check_default),
  "skip-amsgrad": (
    lambda: adam_jax.adam(1e-2, skip_nonfinite=True, amsgrad=True),
    _small,
    _check_skip_amsgrad,
  ),
  "kahan-average": (
    lambda: adam_jax.adam(1e-2, param_rounding="kahan", average_decay=0.99),
    lambda: _small(jnp.bfloat16),
    _check_kahan_average,
  ),
}


def _one_small_and_one_large():
  """A small leaf (float32 moments) and one large enough for 8 bits."""
  return {
    "b": jnp.linspace(-1.0, 1.0, 7),
    "w": jnp.linspace(-2.0, 2.0, 64 * 128).reshape(64, 128),
  }


ALIASES = ["adam", "adamw", "nadam", "nadamw", "amsgrad", "adamax"]
STORAGE = {
  "float32": ({}, jnp.float32),
  "int8": ({"mu_dtype": "int8", "nu_dtype": "int8"}, adam_jax.QuantizedMoment),
  "bf16": ({"mu_dtype": jnp.bfloat16, "nu_dtype": jnp.bfloat16}, jnp.bfloat16),
  "int4": ({"mu_dtype": "int4", "nu_dtype": "int4"}, adam_jax.Int4Moment),
  "int4-factored": ({"mu_dtype": "int4", "nu_dtype": "factored"}, adam_jax.Int4Moment),
}


def _check_storage(want):
  def check(state):
    w = state[0].mu["w"]
    if want in (adam_jax.QuantizedMoment, adam_jax.Int4Moment):
      assert isinstance(w, want)
    else:
      assert w.dtype == want

  return check


# Every alias with float32 storage, and the other storages (one code path
# for every alias) with adam and nadamw; packed moments are the int8-packed
# case.
for _name in ALIASES:
  for _storage, (_kwargs, _want) in STORAGE.items():
    if _storage == "float32" or _name in ("adam", "nadamw"):
      CASES[f"{_name}-{_storage}"] = (
        lambda name=_name, kwargs=_kwargs: getattr(adam_jax, name)(1e-2, **kwargs),
        _one_small_and_one_large,
        _check_storage(_want),
      )


def _grads(params, seed):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return treedef.unflatten(
    [
      (0.1 * jax.random.normal(k, x.shape)).astype(x.dtype)
      for k, x in zip(keys, leaves, strict=True)
    ]
  )


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def _assert_bitwise_equal(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


@pytest.mark.parametrize("name", sorted(CASES))
def test_exported_update_takes_and_returns_the_state(name):
  make_tx, make_params, check = CASES[name]
  tx, params = make_tx(), make_params()
  state = tx.init(params)
  check(state)
  update = jax.jit(tx.update)
  args = (_grads(params, 0), state, params)
  exported = export.export(update)(*_abstract(args))
  assert "custom_call" not in exported.mlir_module(), "not plain StableHLO"
  restored = export.deserialize(exported.serialize())

  got_state, want_state = state, state
  for step in range(STEPS):
    grads = _grads(params, step)
    got_u, got_state = restored.call(grads, got_state, params)
    want_u, want_state = update(grads, want_state, params)
    _assert_bitwise_equal(got_u, want_u)
    _assert_bitwise_equal(got_state, want_state)
    assert jax.tree.structure(got_state) == jax.tree.structure(state)
    params = optax.apply_updates(params, want_u)
  check(got_state)


def _nested_params():
  """Dicts, lists, tuples and None leaves, with enough small leaves to pack."""
  return {
    "a": [jnp.ones(3) for _ in range(40)],
    "b": (None, {"c": tuple(jnp.ones((2, 2)) for _ in range(30)), "d": None}),
    "e": [None, (jnp.ones(5),)],
  }


def _round_trip_layout(moments):
  """``moments``'s layout as ``jax.export`` reads it back from the in and out
  structures of an exported function taking and returning it."""
  exported = export.export(jax.jit(lambda m: m))(_abstract(moments))
  restored = export.deserialize(exported.serialize())
  layouts = []
  for tree in (restored.in_tree.children()[0].children()[0], restored.out_tree):
    node_type, (layout, n_own) = tree.node_data()
    assert node_type is adam_jax.PackedMoments
    assert n_own == len(moments.own)
    layouts.append(layout)
  return layouts


def test_packed_layout_survives_serialization():
  mu = adam_jax.scale_by_adam().init(_nested_params()).mu
  assert isinstance(mu, adam_jax.PackedMoments)
  for layout in _round_trip_layout(mu):
    assert layout is not mu.layout
    assert layout == mu.layout
    assert hash(layout) == hash(mu.layout)


Pair = collections.namedtuple("Pair", "left right")
export.register_namedtuple_serialization(
  Pair, serialized_name="tests.unit.test_serialization.Pair"
)
Unregistered = collections.namedtuple("Unregistered", "left right")


def test_packed_layout_with_a_registered_namedtuple_survives_serialization():
  params = Pair(left=_nested_params(), right=[jnp.ones(4) for _ in range(3)])
  mu = adam_jax.scale_by_adam().init(params).mu
  assert isinstance(mu, adam_jax.PackedMoments)
  for layout in _round_trip_layout(mu):
    assert layout == mu.layout
    assert hash(layout) == hash(mu.layout)


@pytest.mark.parametrize(
  "params",
  [
    Unregistered(left=_nested_params(), right=None),
    {i: jnp.ones(3) for i in range(70)},  # jax.export needs string keys
  ],
  ids=["unregistered-namedtuple", "int-keys"],
)
def test_a_layout_that_cannot_be_serialized_is_named(params):
  mu = adam_jax.scale_by_adam().init(params).mu
  assert isinstance(mu, adam_jax.PackedMoments)
  exported = export.export(jax.jit(lambda m: m))(_abstract(mu))
  with pytest.raises(ValueError, match="cannot serialize the parameters' structure"):
    exported.serialize()


def test_importing_the_registrations_again_does_not_raise():
  module = sys.modules["adam_jax._src.serialization"]
  importlib.reload(module)
  tx = adam_jax.adam(1e-2)
  params = _small()
  state = tx.init(params)
  exported = export.export(jax.jit(tx.update))(*_abstract((params, state, params)))
  restored = export.deserialize(exported.serialize())
  assert restored.out_tree == jax.tree.structure(tx.update(params, state, params))
