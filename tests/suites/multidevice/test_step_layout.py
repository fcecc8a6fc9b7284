"""A jitted step returns every state entry laid out as ``init`` placed it.

On a 2x4 ("data", "model") mesh, with parameters laid out along both axes,
along one, or replicated, and 8-bit, 4-bit (with a 4-bit or a factored
second moment) or bf16 moments, with and without ZeRO-1
(``partition="data"``): after three jitted steps every state entry has the
sharding it had after ``init`` (and that ``state_shardings`` describes), no
device holds more state than before, the step compiled once, and a block
(or a 4-bit rank-1 or factored statistic) spread over shards costs a
reduction of its scale, not a gather of the moment.
"""

import re

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

# name: (shape, layout). (64, 128): a block is 2 rows, split over "model";
# (64, 96): a block is 2 rows of 96 values (not 256 consecutive values);
# (256, 1024): blocks along the last axis, whole on each shard. "rows" is
# P("model", None) spelled as jit returns it: jit's cache tells the two
# spellings apart, so parameters placed with the other would compile a
# second step whatever the optimizer (its state is spelled this way anyway,
# see test_state_is_spelled_as_a_step_returns_it).
PARAMS = {
  "both": ((64, 128), P("data", "model")),
  "rows": ((64, 128), P("model")),
  "columns": ((64, 128), P(None, "model")),
  "replicated": ((64, 128), P()),
  "narrow": ((64, 96), P("data", "model")),
  "wide": ((256, 1024), P("data", "model")),
  "vector": ((8192,), P("model")),
}
FORMATS = {
  "int8": {"mu_dtype": "int8", "nu_dtype": "int8"},
  "bf16": {"mu_dtype": jnp.bfloat16, "nu_dtype": jnp.bfloat16},
  "int4": {"mu_dtype": "int4", "nu_dtype": "int4"},
  "int4_factored": {"mu_dtype": "int4", "nu_dtype": "factored"},
}
CODED = (adam_jax.QuantizedMoment, adam_jax.Int4Moment, adam_jax.FactoredMoment)


def _per_device_bytes(tree):
  total: dict[int, int] = {}
  for x in jax.tree.leaves(tree):
    for shard in x.addressable_shards:
      total[shard.device.id] = total.get(shard.device.id, 0) + shard.data.nbytes
  return max(total.values())


def _setup(fmt, partition):
  mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
  rng = np.random.default_rng(0)
  params = {
    name: jax.device_put(
      jnp.asarray(rng.standard_normal(shape), jnp.float32), NamedSharding(mesh, spec)
    )
    for name, (shape, spec) in PARAMS.items()
  }
  tx = adam_jax.adam(0.01, **FORMATS[fmt])
  shardings = adam_jax.state_shardings(tx, params, partition=partition)
  state = tx.init(params)
  if partition is not None:
    state = jax.device_put(state, shardings)
  return tx, params, state, shardings


@pytest.mark.parametrize(
  ("fmt", "partition"),
  [
    *[(fmt, partition) for fmt in ("int8", "bf16") for partition in (None, "data")],
    # 4-bit moments with ZeRO-1 (without: test_sharding.py). Not a 4-bit
    # first moment with a factored second: their splits may differ (for
    # "rows", P(("model", "data")) and P("model", "data")), and a step
    # without out_shardings then moves the statistics.
    ("int4", "data"),
  ],
  ids=lambda x: {None: "follow", "data": "zero1"}.get(x, x),
)
def test_steps_keep_the_layout_init_gave(fmt, partition):
  tx, params, state, shardings = _setup(fmt, partition)
  param_shardings = jax.tree.map(lambda x: x.sharding, params)

  @jax.jit
  def step(p, s, g):
    u, s = tx.update(g, s, p)
    p = optax.apply_updates(p, u)
    if partition is not None:  # ZeRO-1 keeps the parameters where they were
      p = jax.lax.with_sharding_constraint(p, param_shardings)
    return p, s

  before = _per_device_bytes(state)
  placed = [x.sharding for x in jax.tree.leaves(state)]
  paths = [
    jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(state)
  ]
  grads = [jax.tree.map(lambda x, k=k: x * (0.01 * (k + 1)), params) for k in range(3)]
  p, s = step(params, state, grads[0])
  with compiles() as compiled:  # steps 2 and 3 reuse step 1's executable
    for g in grads[1:]:
      p, s = step(p, s, g)
  assert not compiled, compiled
  assert _per_device_bytes(s) == before
  for path, x, was, want in zip(
    paths, jax.tree.leaves(s), placed, jax.tree.leaves(shardings), strict=True
  ):
    assert x.sharding.is_equivalent_to(was, x.ndim), (path, x.sharding, was)
    assert x.sharding.is_equivalent_to(want, x.ndim), (path, x.sharding, want)


def _stats(state):
  """The scales (8-bit, 4-bit) and statistics (factored) of the coded
  moments in ``state``: the arrays a step may reduce across shards."""
  coded = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, CODED))
  out = []
  for x in coded:
    if isinstance(x, adam_jax.QuantizedMoment):
      out.append(x.scales)
    elif isinstance(x, adam_jax.Int4Moment):
      out += list(x.scales)
    elif isinstance(x, adam_jax.FactoredMoment):
      out += [x.row, x.col]
  return out


# A collective's result: one array, or a tuple of them (XLA combines
# reductions), then the op.
COLLECTIVE = re.compile(r"= (\([^=]*?\)|\w+\[[\d,]*\]\S*) (all-gather|all-reduce)\(")


@pytest.mark.parametrize("fmt", ["int8", "int4_factored"])
def test_split_blocks_reduce_scales_instead_of_gathering_moments(fmt):
  """The only collectives of a step with coded moments are the cross-shard
  maxima of the blocks' scales (8-bit or 4-bit; and the sums of a factored
  moment's statistics): float32, each at most one float per scale or
  statistic and shard (4 shards along "model")."""
  tx, params, state, _ = _setup(fmt, None)
  grads = jax.tree.map(lambda x: x * 0.01, params)
  hlo = jax.jit(tx.update).lower(grads, state, params).compile().as_text()
  stats = sum(int(np.prod(s.shape)) for s in _stats(state))
  found = COLLECTIVE.findall(hlo)
  assert found, "expected the scales' cross-shard reductions"
  for result, op in found:
    arrays = re.findall(r"(\w+)\[([\d,]*)\]", result)
    assert {dtype for dtype, _ in arrays} == {"f32"}, (op, result)
    size = sum(
      int(np.prod([int(d) for d in dims.split(",") if d])) for _, dims in arrays
    )
    assert size <= 4 * stats, (op, result)
  if fmt == "int8":  # 8-bit maxima are gathered (4-bit ones all-reduced)
    assert {op for _, op in found} == {"all-gather"}, found
  for op in ("all-to-all", "collective-permute"):
    assert op not in hlo, op


def test_state_is_spelled_as_a_step_returns_it():
  """Parameters placed with ``P("model", None)``: the state's entries are
  placed with ``P("model")``, the spelling a jitted step returns, so the
  state adds no second compile of the step."""
  mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
  params = {
    "w": jax.device_put(jnp.ones((64, 128)), NamedSharding(mesh, P("model", None)))
  }
  for fmt in FORMATS:
    state = adam_jax.adam(0.01, **FORMATS[fmt]).init(params)
    specs = {x.sharding.spec for x in jax.tree.leaves(state[0].mu)}
    assert P("model", None) not in specs, (fmt, specs)


def test_blocks_that_cannot_follow_the_shards_are_named_at_init():
  """A (6, 128) parameter split in 3-row halves: its 3 blocks of 2 rows do
  not split over 2 shards, which init says (the layouts above say nothing:
  warnings are errors in this suite); the same for 4-bit blocks (the
  rank-1 second moment has no blocks, and says nothing)."""
  mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
  params = {"w": jax.device_put(jnp.ones((6, 128)), NamedSharding(mesh, P("data")))}
  tx = adam_jax.adam(0.01, mu_dtype="int8", int8_min_size=256)
  with pytest.warns(
    UserWarning, match=r"3 blocks of 2 slices along axis 0 .* 2 shards"
  ):
    tx.init(params)
  # 4-bit blocks of 128: a (6, 64) parameter has 3 blocks of 2 rows too.
  params = {"w": jax.device_put(jnp.ones((6, 64)), NamedSharding(mesh, P("data")))}
  tx = adam_jax.adam(0.01, mu_dtype="int4", nu_dtype="int4", int8_min_size=256)
  with pytest.warns(
    UserWarning, match=r"4-bit moment .* 3 blocks of 2 slices along axis 0 .* 2 shards"
  ):
    tx.init(params)
