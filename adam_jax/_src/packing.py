"""How a step is executed over a whole tree: small leaves packed into chunks.

XLA runs an optimizer step over a tree leaf by leaf: every moment leaf is a
separate buffer that the runtime passes in and out of the step, and a separate
kernel that XLA compiles. On a tree of thousands of small leaves that per-leaf
cost, not the arithmetic, sets the step and compile time (on CPU a tree of
thousands of small leaves steps many times slower than the same math over one
flat array).

So the moments of small leaves (fewer than ``PACK_BELOW`` elements, when a
tree has at least ``PACK_MIN_LEAVES`` of them) are stored packed: the leaves
of one storage group (same dtypes and placement), in tree order, are
concatenated into flat chunks of at most ``CHUNK_LEAVES`` leaves. A step
concatenates the gradients of a chunk, runs the one-leaf Adam math
(``rule.leaf_step``) once over the chunk, and slices the update back
into leaves, which XLA fuses into the caller's ``apply_updates``. Chunks
(rather than one flat buffer per group) keep the slices' offsets few and
repeated, so XLA compiles one kernel for every leaf at the same offset of
equal chunks instead of one per leaf.

Large leaves keep their own moment arrays: for them the per-leaf cost is
negligible, and they keep the layout of their parameter.

Packing is for processes that see one device. With several devices a chunk
could not follow its leaves' shardings, and ``init`` under ``jit`` cannot see
them, so every moment keeps its own array there, laid out like its parameter;
this keeps ``init``, ``jit(init)`` and ``jax.eval_shape(init)`` (a checkpoint's
restore target) in one structure.
"""

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from adam_jax._src import placement
from adam_jax._src import storage
from adam_jax._src.storage import int8

# Leaves with fewer elements than this are packed.
PACK_BELOW = 2**16
# Pack only when a tree has at least this many small leaves: below it the
# per-leaf cost is small and packing's own (a concatenation, a few kernels per
# chunk) is not repaid, so the state keeps optax's layout.
PACK_MIN_LEAVES = 64
# At most this many leaves per chunk.
CHUNK_LEAVES = 32


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where each leaf's moment lives (static, hashable: part of the treedef).

  ``treedef`` is the parameters' structure (None leaves included). For each
  leaf, ``slots`` holds ``(chunk, offset)`` when it is packed and None when it
  has its own array (or is None). ``shapes`` are the leaves' shapes (None for
  None leaves) and ``chunk_sizes`` the chunks' lengths.
  """

  treedef: Any
  slots: tuple[tuple[int, int] | None, ...]
  shapes: tuple[tuple[int, ...] | None, ...]
  chunk_sizes: tuple[int, ...]

  def members(self, chunk: int) -> list[tuple[int, int]]:
    """``(leaf index, offset)`` of the leaves packed in ``chunk``."""
    return self._members()[chunk]

  @functools.cache  # noqa: B019 (a frozen, hashable dataclass: kept with it)
  def _members(self) -> list[list[tuple[int, int]]]:
    out: list[list[tuple[int, int]]] = [[] for _ in self.chunk_sizes]
    for i, slot in enumerate(self.slots):
      if slot is not None:
        out[slot[0]].append((i, slot[1]))
    return out


@jax.tree_util.register_pytree_node_class
class PackedMoments:
  """A moment tree whose small leaves are packed into flat chunks.

  ``adam_jax`` stores ``mu``, ``nu`` (and ``nu_max``) this way when the
  parameters have many small leaves (see :func:`adam_jax.scale_by_adam`'s
  ``pack_small_leaves``). It is a pytree (its leaves are the large leaves'
  own arrays and the chunks), so ``jit``, ``tree.map``, checkpointing and
  optax's wrappers handle it like any state. ``unpack()`` returns the moment
  as a tree like the parameters (without single-array wrappers such as Flax
  NNX's ``Variable``); indexing (``state.mu["w"]``) reads that tree.

  Example:
    >>> import jax.numpy as jnp
    >>> import adam_jax
    >>> params = {f"b{i:02d}": jnp.ones(3) for i in range(70)}
    >>> state = adam_jax.scale_by_adam().init(params)
    >>> type(state.mu).__name__, [c.shape for c in state.mu.chunks]
    ('PackedMoments', [(96,), (96,), (18,)])
    >>> state.mu["b07"].shape
    (3,)
  """

  def __init__(self, layout: Layout, own: tuple[Any, ...], chunks: tuple[Any, ...]):
    self.layout = layout
    self.own = tuple(own)  # one entry per unpacked non-None leaf, in order
    self.chunks = tuple(chunks)

  def tree_flatten(self):
    # One flat list of children, no nested tuples: tools that treat an empty
    # container as a leaf (Orbax does, for ``own`` when every leaf is packed)
    # would otherwise hand one object back where a tuple was.
    return (*self.own, *self.chunks), (self.layout, len(self.own))

  @classmethod
  def tree_unflatten(cls, aux, children):
    layout, n_own = aux
    children = tuple(children)
    return cls(layout, children[:n_own], children[n_own:])

  def leaves(self) -> list[Any]:
    """One entry per leaf of ``layout.treedef``: the own array, the leaf's
    slice of its chunk (reshaped), or None."""
    own = iter(self.own)
    out: list[Any] = []
    for slot, shape in zip(self.layout.slots, self.layout.shapes, strict=True):
      if shape is None:
        out.append(None)
      elif slot is None:
        out.append(next(own))
      else:
        chunk = storage.decoded(self.chunks[slot[0]])
        out.append(_cut(chunk, slot[1], shape, chunk.dtype))
    return out

  def unpack(self) -> Any:
    """The moment as a tree like the parameters."""
    return self.layout.treedef.unflatten(self.leaves())

  def abstract(self) -> Any:
    """The unpacked tree's shapes and dtypes, as ``jax.ShapeDtypeStruct`` leaves."""
    return _abstract(
      self.layout,
      tuple(_logical_dtype(x) for x in self.own),
      tuple(_logical_dtype(x) for x in self.chunks),
    )

  def __getitem__(self, key: Any) -> Any:
    return self.unpack()[key]

  def __repr__(self) -> str:
    packed = sum(slot is not None for slot in self.layout.slots)
    return (
      f"PackedMoments({packed} leaves in {len(self.chunks)} chunks,"
      f" {len(self.own)} own arrays)"
    )


@functools.lru_cache(maxsize=64)
def _abstract(layout: Layout, own_dtypes: tuple, chunk_dtypes: tuple) -> Any:
  """:meth:`PackedMoments.abstract`, cached: it runs at every trace."""
  own = iter(own_dtypes)
  out: list[Any] = []
  for slot, shape in zip(layout.slots, layout.shapes, strict=True):
    if shape is None:
      out.append(None)
    else:
      dtype = next(own) if slot is None else chunk_dtypes[slot[0]]
      out.append(jax.ShapeDtypeStruct(shape, dtype))
  return layout.treedef.unflatten(out)


def _logical_dtype(x: Any) -> Any:
  return jnp.dtype(jnp.float32) if storage.is_coded(x) else jnp.result_type(x)


def is_packed(x: Any) -> bool:
  return isinstance(x, PackedMoments)


def _stored(x: Any) -> bool:
  return is_packed(x) or storage.is_coded(x)


def logical(tree: Any) -> Any:
  """``tree`` with every :class:`PackedMoments` replaced by its abstract
  unpacked tree and every 8-bit moment by a float32 abstract array: the
  structure that does not depend on how moments are stored (used to compare
  a state with what ``init`` would give)."""

  def view(x):
    return x.abstract() if is_packed(x) else storage.logical(x)

  return jax.tree.map(view, tree, is_leaf=_stored)


def _placement(x: Any) -> Any:
  """Where a chunk holding ``x`` must live: None (default placement: ``x``
  is a tracer, not a jax.Array, or not committed to a device) or its
  sharding (replicated, on a mesh: packing runs with one device only)."""
  sharding = placement.placement(x)
  if isinstance(sharding, jax.sharding.NamedSharding):
    return placement.on(sharding, jax.sharding.PartitionSpec())
  return sharding


def plan(
  leaves: list[Any], treedef: Any, group_of, align_of=lambda group: 1
) -> tuple[Layout, list[Any]]:
  """Decides which leaves to pack and how.

  Args:
    leaves: the parameters' leaves (None included).
    treedef: their structure.
    group_of: a leaf's storage group (hashable, e.g. its moment dtypes);
      only leaves of one group share a chunk.
    align_of: a group's alignment: its leaves start at multiples of it, and
      its chunks' sizes are multiples of it (8-bit storage: whole blocks).

  Returns:
    ``(layout, placements)``: the layout (no chunks when packing does not
    pay) and each chunk's placement (a sharding or None).
  """
  shapes = tuple(None if x is None else tuple(jnp.shape(x)) for x in leaves)
  if jax.device_count() > 1:  # see the module doc
    return Layout(treedef, (None,) * len(leaves), shapes, ()), []
  small = []
  for i, (x, shape) in enumerate(zip(leaves, shapes, strict=True)):
    size = 0 if shape is None else math.prod(shape)
    group = None if shape is None or size >= PACK_BELOW else group_of(x)
    if group is None:
      continue
    small.append((i, (group, _placement(x)), size))
  slots: list[tuple[int, int] | None] = [None] * len(leaves)
  sizes: list[int] = []
  placements: list[Any] = []
  if len(small) >= PACK_MIN_LEAVES:
    open_chunk: dict[Any, tuple[int, int]] = {}  # group -> (chunk, its leaf count)
    for i, key, size in small:
      chunk, count = open_chunk.get(key, (-1, CHUNK_LEAVES))
      if count == CHUNK_LEAVES:
        chunk, count = len(sizes), 0
        sizes.append(0)
        placements.append(key[1])
      slots[i] = (chunk, sizes[chunk])
      sizes[chunk] += -(-size // align_of(key[0])) * align_of(key[0])
      open_chunk[key] = (chunk, count + 1)
  return Layout(treedef, tuple(slots), shapes, tuple(sizes)), placements


def zeros(
  layout: Layout, placements: list[Any], leaves: list[Any], dtype_for, signed: bool
) -> Any:
  """A zero moment in ``layout`` (which has chunks)."""
  own = [
    storage.zeros(x, dtype_for(x), signed)
    for x, slot in zip(leaves, layout.slots, strict=True)
    if x is not None and slot is None
  ]
  chunks: list[Any] = []
  for chunk, (size, where) in enumerate(
    zip(layout.chunk_sizes, placements, strict=True)
  ):
    first = leaves[layout.members(chunk)[0][0]]
    dtype = dtype_for(first)
    if isinstance(dtype, str):  # 8-bit: whole blocks (plan aligned them)
      chunks.append(int8.quantized_zeros((size,), signed, where))
    else:
      chunks.append(jnp.zeros([size], dtype, device=where))
  return PackedMoments(layout, tuple(own), tuple(chunks))


def packed_step(layout, leaf_step, g_leaves, moment_states, p_leaves, wd_leaves, one):
  """Runs ``leaf_step`` over ``layout``: each own leaf alone, each chunk once.

  Args:
    layout: the moments' :class:`Layout`.
    leaf_step: ``(g, moments, p, wd) -> (u, *moments)`` for one array.
    g_leaves: the gradients' leaves (None included).
    moment_states: the :class:`PackedMoments` (or None) of each moment.
    p_leaves, wd_leaves: per leaf, the parameter and coupled decay rate (or
      None).
    one: a float32 scalar equal to 1 that XLA cannot see is 1 (``Clock.one``).

  Returns:
    ``(u_leaves, new_moments)``: the updates per leaf and each moment as a
    :class:`PackedMoments` (or None).
  """
  u_leaves: list[Any] = [None] * len(g_leaves)
  own_in = [iter(() if s is None else s.own) for s in moment_states]
  own_out: list[list[Any]] = [[] for _ in moment_states]
  for i, (g, slot) in enumerate(zip(g_leaves, layout.slots, strict=True)):
    if g is None or slot is not None:
      continue
    ms = [
      None if s is None else next(it)
      for s, it in zip(moment_states, own_in, strict=True)
    ]
    u_leaves[i], *new = leaf_step(g, ms, p_leaves[i], wd_leaves[i])
    for out, x in zip(own_out, new, strict=True):
      out.append(x)
  chunk_out: list[list[Any]] = [[] for _ in moment_states]
  for chunk in range(len(layout.chunk_sizes)):
    ms = [None if s is None else s.chunks[chunk] for s in moment_states]
    args = (layout, chunk, leaf_step, g_leaves, ms, p_leaves, wd_leaves)
    us, new = _chunk_step(*args, one)
    for (i, _), u in zip(layout.members(chunk), us, strict=True):
      u_leaves[i] = u
    for out, x in zip(chunk_out, new, strict=True):
      out.append(x)
  states = [
    None if s is None else PackedMoments(layout, tuple(own), tuple(chunks))
    for s, own, chunks in zip(moment_states, own_out, chunk_out, strict=True)
  ]
  return u_leaves, states


def _chunk_step(layout, chunk, leaf_step, g_leaves, ms, p_leaves, wd_leaves, one):
  """One chunk's ``(updates of its members, new chunk moments)``: the
  members' gradients concatenated, ``leaf_step`` once over the chunk and the
  update sliced back into leaves (or, for gradients of unlike precision,
  leaf by leaf)."""
  members = layout.members(chunk)
  gs = [g_leaves[i] for i, _ in members]
  cdts = {storage.compute_dtype(jnp.result_type(g)) for g in gs}
  if len(cdts) != 1:
    return _chunk_by_leaf(layout, members, leaf_step, g_leaves, ms, p_leaves, wd_leaves)
  (cdt,) = cdts
  size = layout.chunk_sizes[chunk]
  g_flat = _pack(members, [_flat(g, cdt) for g in gs], size)
  p_flat, wd = _chunk_decay(members, p_leaves, wd_leaves, cdt, size)
  u_flat, *new = leaf_step(g_flat, ms, p_flat, wd)
  u_flat = _materialized(u_flat, one)
  us = [_cut(u_flat, o, layout.shapes[i], g_leaves[i].dtype) for i, o in members]
  return us, new


def _flat(x: jax.Array, dtype: Any) -> jax.Array:
  """``x`` as a 1-d array of ``dtype`` (lax ops: cheap to trace per leaf)."""
  x = jax.lax.reshape(x, (x.size,))
  return x if x.dtype == dtype else jax.lax.convert_element_type(x, dtype)


def _pack(members, parts, size):
  """Flat parts concatenated at their members' offsets into ``size`` values
  (zeros in the gaps that 8-bit chunks leave to align leaves to blocks)."""
  pieces, end = [], 0
  for (_, offset), x in zip(members, parts, strict=True):
    if offset > end:
      pieces.append(jnp.zeros([offset - end], x.dtype))
    pieces.append(x)
    end = offset + x.shape[0]
  if size > end:
    pieces.append(jnp.zeros([size - end], pieces[0].dtype))
  return pieces[0] if len(pieces) == 1 else jax.lax.concatenate(pieces, 0)


def _cut(flat: jax.Array, offset: int, shape: tuple[int, ...], dtype: Any):
  """A leaf's part of a chunk, in its shape and ``dtype``."""
  size = math.prod(shape)
  x = jax.lax.reshape(jax.lax.slice(flat, (offset,), (offset + size,)), shape)
  return x if x.dtype == dtype else jax.lax.convert_element_type(x, dtype)


def _materialized(u: jax.Array, one: jax.Array) -> jax.Array:
  """``u`` itself, computed once for the whole chunk.

  XLA copies cheap elementwise ops (the clip and the zero select that end the
  Adam math) into every consumer, so each leaf's ``apply_updates`` kernel
  would redo them over the chunk before slicing its part: one large distinct
  kernel per leaf to compile. A division is not copied, and dividing by an
  exact 1 changes no value (NaN, infinities and signed zeros included).
  (``lax.optimization_barrier`` does not help: XLA drops it before fusing.)
  """
  if not jnp.issubdtype(u.dtype, jnp.floating):
    return u
  return u / one.astype(u.dtype)


def _chunk_decay(members, p_leaves, wd_leaves, cdt, size):
  """A chunk's parameters and coupled decay rate: the packed parameters
  (zeros where the mask leaves a leaf out) and the rate, or ``(None, None)``
  when no member decays."""
  rates = [wd_leaves[i] for i, _ in members]
  if all(wd is None for wd in rates):
    return None, None
  wd = next(wd for wd in rates if wd is not None)
  parts = [
    _flat(jnp.asarray(p_leaves[i]), cdt)
    if wd_leaves[i] is not None
    else jnp.zeros([math.prod(jnp.shape(p_leaves[i]))], cdt)
    for i, _ in members
  ]
  return _pack(members, parts, size), wd


def _chunk_by_leaf(layout, members, leaf_step, g_leaves, ms, p_leaves, wd_leaves):
  """:func:`_chunk_step` leaf by leaf: the chunk's moments sliced out and
  re-packed (8-bit ones decoded first and encoded again after)."""
  columns: list[list[Any]] = [[] for _ in ms]
  floats = [None if m is None else storage.decoded(m) for m in ms]
  us = []
  for i, offset in members:
    parts = [
      None if m is None else _cut(m, offset, layout.shapes[i], m.dtype) for m in floats
    ]
    u, *new = leaf_step(g_leaves[i], parts, p_leaves[i], wd_leaves[i])
    us.append(u)
    for column, x in zip(columns, new, strict=True):
      if x is not None:
        column.append(_flat(x, x.dtype))
  out = []
  for m, column in zip(ms, columns, strict=True):
    if m is None:
      out.append(None)
      continue
    flat = _pack(members, column, m.shape[0])
    out.append(storage.encoded([flat], [m])[0])
  return us, out
