"""State shardings derived from parameter shardings, and ZeRO-1 partitioning.

Every moment is laid out like its parameter by construction (``init`` places
it there, or ties it to the parameter under ``jit``: see
:func:`storage.follow`). :func:`state_shardings` states that layout ahead of
time, for ``jax.jit(tx.init, out_shardings=...)``, for a jitted step's
``in_shardings``/``out_shardings`` and for Orbax restore targets, and splits
it further over a mesh axis on request.
"""

from typing import Any

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import optax

from adam_jax._src import packing
from adam_jax._src import placement
from adam_jax._src import validation
from adam_jax._src.storage import factored
from adam_jax._src.storage import int4
from adam_jax._src.storage import int8


class _NotLike(Exception):
  """A state subtree is not laid out like the parameters."""


def state_shardings(
  tx: optax.GradientTransformation,
  params: Any,
  shardings: Any = None,
  *,
  partition: str | None = None,
) -> Any:
  r"""The sharding of every leaf of ``tx.init(params)``, from the parameters'.

  Each state leaf that stands for a parameter (a moment, an 8-bit moment's
  codes, a Kahan compensation, a parameter average, optax's ``MultiSteps``
  accumulator, ...) gets its parameter's sharding; an 8-bit moment's scales
  (one per block of 256 values along the trailing axes) follow the
  parameter's leading axes, and its block axis when each shard holds whole
  blocks. Every other leaf (step counts, hyperparameters) is replicated.
  This is the layout ``tx.init`` itself produces, eagerly and under
  ``jit``, so it serves as ``jax.jit(tx.init, out_shardings=...)``, as a
  jitted step's state shardings, and as an Orbax restore target's.

  **ZeRO-1** (Rajbhandari et al., 2020, stage 1): with
  ``partition="data"``, each of those leaves is further split over the mesh
  axis ``"data"`` along its first dimension that the axis divides evenly
  and that is not split yet (8-bit and 4-bit moments: a leading dimension,
  or the block axis when each piece still holds whole blocks; the vectors
  of a rank-1 4-bit or a factored second moment follow the split
  parameter, as a step computes them, so only those of the axis split over
  ``"data"`` are split). With parameters
  replicated over ``"data"`` (data parallelism), each device then holds
  :math:`1/N` of the optimizer state instead of all of it; a step jitted
  with these shardings updates each slice where it lives and XLA all-gathers
  the updates. Leaves that no dimension of which the axis divides stay as
  they were.

  Args:
    tx: the optimizer (any optax ``GradientTransformation``).
    params: the parameters: arrays, or ``jax.ShapeDtypeStruct``\ s (nothing
      is allocated: the state's shapes come from ``jax.eval_shape``).
    shardings: the parameters' shardings: a tree like ``params`` of
      ``jax.sharding.Sharding``, or one sharding for all; by default each
      leaf's own ``.sharding``.
    partition: a mesh axis name to partition the state over (ZeRO-1), or
      None.

  Returns:
    A tree like ``tx.init(params)`` whose leaves are shardings.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jax.sharding import NamedSharding, PartitionSpec as P
    >>> import adam_jax
    >>> mesh = jax.make_mesh((jax.device_count(),), ("data",))
    >>> params = {"w": jnp.zeros((8, 4))}
    >>> tx = adam_jax.adam(1e-3)
    >>> shard = adam_jax.state_shardings(
    ...   tx, params, NamedSharding(mesh, P()), partition="data")
    >>> shard[0].mu["w"].spec, shard[0].count.spec
    (P('data',), P())
    >>> state = jax.jit(tx.init, out_shardings=shard)(params)
    >>> state[0].mu["w"].sharding == shard[0].mu["w"]
    True

  References:
    Rajbhandari, Rasley, Ruwase and He, "ZeRO: Memory Optimizations Toward
    Training Trillion Parameter Models", SC 2020.
  """
  leaves, treedef_ = jax.tree.flatten(params, is_leaf=validation.is_none)
  treedef: Any = treedef_  # (jax's stubs lack PyTreeDef.unflatten)
  given = _param_shardings(leaves, treedef, shardings)
  abstract = [
    None
    if x is None
    else jax.ShapeDtypeStruct(jax.numpy.shape(x), jax.numpy.result_type(x))
    for x in leaves
  ]
  state = jax.eval_shape(tx.init, treedef.unflatten(abstract))
  named = [s for s in given if isinstance(s, NamedSharding)]
  if partition is not None:
    _check_partition(partition, named, given)
  replicated = (
    NamedSharding(named[0].mesh, P())
    if named
    else next((s for s in given if s is not None), None)
  )
  info = treedef.unflatten(
    [
      None if x is None else _Param(tuple(x.shape), s)
      for x, s in zip(abstract, given, strict=True)
    ]
  )
  return _assign(state, info, replicated, partition)


class _Param:
  """A parameter's shape and sharding (a leaf of the matching tree)."""

  def __init__(self, shape: tuple[int, ...], sharding: Any):
    self.shape, self.sharding = shape, sharding


def _param_shardings(leaves: list[Any], treedef: Any, shardings: Any) -> list[Any]:
  """One sharding per parameter leaf (None for None leaves), checked."""
  if shardings is None:
    out = []
    for path, x in validation.leaf_paths(treedef.unflatten(leaves)):
      sharding = None if x is None else getattr(x, "sharding", None)
      if x is not None and not isinstance(sharding, jax.sharding.Sharding):
        raise ValueError(
          f"shardings=None takes each parameter's own .sharding, but"
          f" params{path} has none (a {type(x).__name__}): pass shardings,"
          " a tree like params of jax.sharding.Sharding (or one for all)."
        )
      out.append(sharding)
    return out
  if isinstance(shardings, jax.sharding.Sharding):
    return [None if x is None else shardings for x in leaves]
  try:
    flat = treedef.flatten_up_to(shardings)
  except (ValueError, TypeError) as e:
    raise ValueError(
      "shardings must be a jax.sharding.Sharding or a tree like params of"
      f" them; its structure differs from the parameters': {e}"
    ) from None
  for (path, x), s in zip(
    validation.leaf_paths(treedef.unflatten(leaves)), flat, strict=True
  ):
    if x is not None and not isinstance(s, jax.sharding.Sharding):
      raise ValueError(
        f"shardings{path} must be a jax.sharding.Sharding, got"
        f" {type(s).__name__} {s!r}."
      )
  return flat


def _check_partition(partition: Any, named: list[Any], given: list[Any]) -> None:
  if not isinstance(partition, str):
    raise ValueError(
      f"partition must be a mesh axis name (a str) or None, got"
      f" partition={partition!r}."
    )
  if not named or len(named) != sum(s is not None for s in given):
    raise ValueError(
      f"partition={partition!r} needs every parameter on a Mesh (a"
      " NamedSharding); got other shardings:"
      f" {sorted({type(s).__name__ for s in given if s is not None})}."
    )
  names = named[0].mesh.axis_names
  if partition not in names:
    raise ValueError(
      f"partition={partition!r} is not an axis of the parameters' mesh;"
      f" its axes are {tuple(names)}."
    )


def _assign(node: Any, info: Any, replicated: Any, partition: Any) -> Any:
  """Shardings for the state subtree ``node``: like the parameters where
  ``node`` is laid out like them, else replicated (recursing into
  containers)."""
  if node is None:
    return None
  if packing.is_packed(node):  # only in one-device processes: one placement
    return jax.tree.map(lambda _: replicated, node)
  try:
    return jax.tree.map(lambda p, x: _like(p, x, partition), info, node)
  except (_NotLike, ValueError, TypeError):
    pass
  if isinstance(node, jax.ShapeDtypeStruct):  # a leaf not laid out like a param
    return _split(replicated, node.shape, partition) if node.shape else replicated
  children, structure_ = jax.tree_util.tree_flatten(
    node, is_leaf=lambda x: x is not node
  )
  if len(children) == 1 and children[0] is node:
    return replicated
  structure: Any = structure_
  return structure.unflatten(
    [_assign(child, info, replicated, partition) for child in children]
  )


def _like(p: Any, x: Any, partition: Any) -> Any:
  """The sharding(s) of ``x``, the state's entry for parameter ``p``."""
  if p is None:
    if x is not None:
      raise _NotLike
    return None
  if int8.is_quantized(x) and tuple(x.codes.shape) == p.shape:
    codes, scales = _split_quantized(p.sharding, p.shape, partition)
    return int8.QuantizedMoment(codes, scales)
  if int4.is_int4(x) and x.shape == tuple(p.shape):
    return _int4_shardings(p.sharding, x, partition)
  if factored.is_factored(x) and x.shape == tuple(p.shape):
    split = _split(p.sharding, x.shape, partition)
    return factored.FactoredMoment(
      *factored.stat_shardings(split, x.shape), x.shape, x.axes
    )
  if isinstance(x, jax.ShapeDtypeStruct) and tuple(x.shape) == p.shape:
    return _split(p.sharding, p.shape, partition)
  if not jax.tree.leaves(x):  # e.g. optax.masked's MaskedNode: no arrays
    return x
  raise _NotLike


def _spec(sharding: NamedSharding, ndim: int) -> list[Any]:
  return list(sharding.spec) + [None] * (ndim - len(sharding.spec))


def _uses(spec: list[Any], axis: str) -> bool:
  return any(axis == e or (isinstance(e, tuple) and axis in e) for e in spec)


def _split(
  sharding: Any, shape: tuple[int, ...], axis: Any, candidates: Any = None
) -> Any:
  """``sharding`` further split over mesh ``axis`` along the first
  dimension that it divides evenly (an unsplit one first). ``candidates``:
  ``(dims, unit)`` pairs tried in turn, the pieces along ``dims`` staying
  multiples of ``unit`` (default: every dimension, unit 1)."""
  if axis is None or not isinstance(sharding, NamedSharding) or not shape:
    return sharding
  spec = _spec(sharding, len(shape))
  if _uses(spec, axis):
    return sharding
  n = sharding.mesh.shape[axis]
  for dims, unit in candidates or [(range(len(shape)), 1)]:
    fits = [
      d
      for d in dims
      if shape[d] % (placement.shards(sharding, spec[d]) * n * unit) == 0
    ]
    for d in [d for d in fits if spec[d] is None] + [d for d in fits if spec[d]]:
      spec[d] = _joined(spec[d], axis)
      return placement.named(sharding.mesh, spec)
  return sharding


def _joined(entry: Any, axis: str) -> Any:
  if entry is None:
    return axis
  return (*(entry if isinstance(entry, tuple) else (entry,)), axis)


def _split_quantized(sharding: Any, shape: tuple[int, ...], axis: Any):
  """Codes and scales shardings of an 8-bit moment of a parameter laid out
  by ``sharding``, split over ``axis`` where whole blocks allow it: along a
  leading axis, or along the block axis when each piece still holds whole
  blocks."""
  a = int8.block_axis(shape)
  candidates: list[tuple[Any, int]] = [(range(a), 1)]
  if shape:
    candidates.append(([a], int8.block_rows(shape)))
  codes = _split(sharding, shape, axis, candidates)
  return codes, int8.scales_sharding(codes, shape)


def _int4_shardings(sharding: Any, x: Any, axis: Any) -> Any:
  """Codes and scales shardings of a 4-bit moment of a parameter laid out
  by ``sharding``, split over ``axis`` where whole blocks (block-normalized)
  or any axis (rank-1) allow it."""
  shape = x.shape
  if x.rank1:
    split = _split(sharding, shape, axis)
  else:
    flat = shape if shape else (1,)
    a = int8.block_axis(flat, int4.BLOCK4)
    candidates: list[tuple[Any, int]] = [(range(a), 1)]
    candidates.append(([a], int8.block_rows(flat, int4.BLOCK4)))
    split = _split(sharding, shape, axis, candidates)
  return int4.Int4Moment(
    int4.codes_sharding(split, shape),
    tuple(int4.scale_shardings(split, shape, x.signed)),
    shape,
    x.signed,
  )
