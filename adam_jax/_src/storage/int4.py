"""4-bit storage of a moment (Li, Chen & Zhu, NeurIPS 2023).

A moment stored in 4 bits is an :class:`Int4Moment`: two 4-bit codes per
byte, packed along the parameter's last axis, and float32 scales. Following
Li et al. (and the default configuration of their released code):

* the first moment is normalized by blocks of ``BLOCK4 = 128`` values (the
  absmax of each, as the 8-bit storage does with 256) and mapped to the
  signed 4-bit dynamic-exponent map;
* the second moment is normalized *rank-1*: an element is divided by the
  smallest of the maxima of the slices through it (the row and column
  maxima of a matrix), and mapped to a linear map without zero, so that a
  positive ``v`` never decodes to 0 (their "zero-point problem": a zero
  ``v`` divides the step by ``eps`` alone). A tensor with fewer than two
  axes longer than 1 has no rows and columns to use, so its second moment is
  normalized by blocks of 128 instead.

The step decodes the moment to float32 (:func:`dequantize`), runs the Adam
math, and encodes the new moment (:func:`quantize`).
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adam_jax._src import placement
from adam_jax._src.storage import int8

# The storage option's name (``mu_dtype="int4"``/``nu_dtype="int4"``).
INT4 = "int4"
# Values per block of the first moment (and of a second moment without rows
# and columns), each block with its own float32 absmax scale.
BLOCK4 = 128


def code_map4(signed: bool) -> np.ndarray:
  r"""The 4-bit code maps, sorted, as float64 NumPy values.

  Signed (the first moment): the dynamic-exponent map with 3 exponent bits
  of Dettmers et al.'s ``create_dynamic_map(signed=True, 3, 4)``, the map Li
  et al. use: decade :math:`10^{-2+i}` (:math:`i = 0, 1, 2`) holds the
  midpoints of :math:`2^i` equal steps of :math:`[0.1, 1]`, with both signs,
  and 0 and 1 complete the 16 codes (so :math:`-1` is not a code: the most
  negative is :math:`-0.8875`). Unsigned (the second moment): the linear map
  without zero, :math:`(i + 1) / 16`, :math:`i = 0..15`.
  """
  if not signed:
    return np.arange(1, 17) / 16
  values = [0.0, 1.0]
  for i in range(3):
    bounds = np.linspace(0.1, 1, 2**i + 1)
    means = (bounds[:-1] + bounds[1:]) / 2 * 10.0 ** (i - 2)
    values += [*means, *(-means)]
  return np.sort(np.array(values))


@jax.tree_util.register_pytree_node_class
class Int4Moment:
  """A moment stored in 4 bits: packed codes and float32 scales.

  ``codes`` (``uint8``) holds two codes per byte along the parameter's last
  axis (the even index in the low 4 bits), so its shape is the parameter's
  with the last axis halved (rounded up). ``scales`` is a tuple: the absmax
  of each block of 128 values (one array, shaped as the 8-bit storage's
  scales), or, for a second moment normalized rank-1, one vector of maxima
  per axis longer than 1. ``shape`` and ``signed`` are static.

  Example:
    >>> import jax.numpy as jnp
    >>> import adam_jax
    >>> state = adam_jax.adam(mu_dtype="int4", nu_dtype="int4").init(
    ...   {"w": jnp.ones((64, 512))})
    >>> mu, nu = state[0].mu["w"], state[0].nu["w"]
    >>> mu.codes.dtype, mu.codes.shape, [s.shape for s in mu.scales]
    (dtype('uint8'), (64, 256), [(64, 4)])
    >>> [s.shape for s in nu.scales]  # row and column maxima
    [(64,), (512,)]
  """

  def __init__(self, codes: Any, scales: tuple[Any, ...], shape: tuple, signed: bool):
    self.codes = codes
    self.scales = tuple(scales)
    self.shape = tuple(shape)
    self.signed = signed

  def tree_flatten(self):
    return (self.codes, *self.scales), (self.shape, self.signed)

  @classmethod
  def tree_unflatten(cls, aux, children):
    return cls(children[0], tuple(children[1:]), *aux)

  @property
  def rank1(self) -> bool:
    return not self.signed and len(rank1_axes(self.shape)) >= 2

  def dequantize(self) -> jax.Array:
    """The stored moment as a float32 array of the parameter's shape."""
    return dequantize(self)

  def __repr__(self) -> str:
    kind = "signed" if self.signed else "unsigned"
    return f"Int4Moment({kind}, shape={self.shape})"


def is_int4(x: Any) -> bool:
  return isinstance(x, Int4Moment)


def rank1_axes(shape: tuple[int, ...]) -> list[int]:
  """The axes whose maxima normalize a rank-1 second moment: those longer
  than 1."""
  return [a for a, n in enumerate(shape) if n > 1]


def _flat_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  return shape if shape else (1,)


def codes_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  """The packed codes' shape: the last axis halved, rounded up."""
  shape = _flat_shape(shape)
  return (*shape[:-1], -(-shape[-1] // 2))


def _spec(sharding: Any, ndim: int) -> tuple[Any, ...]:
  return tuple(sharding.spec) + (None,) * (ndim - len(sharding.spec))


def codes_sharding(sharding: Any, shape: tuple[int, ...]) -> Any:
  """The packed codes follow the parameter's layout; the last axis stays
  split where each shard holds whole pairs of values, else is not split."""
  if not isinstance(sharding, jax.sharding.NamedSharding):
    return sharding
  if not shape:
    return placement.named(sharding.mesh, [None])
  spec = list(_spec(sharding, len(shape)))
  if shape[-1] % (2 * placement.shards(sharding, spec[-1])) != 0:
    spec[-1] = None
  return placement.named(sharding.mesh, spec)


def scale_shardings(sharding: Any, shape: tuple[int, ...], signed: bool) -> list[Any]:
  """The scales' shardings: block scales as the 8-bit storage's, and each
  rank-1 vector of maxima as its axis of the parameter."""
  if not _is_rank1(shape, signed):
    return [int8.scales_sharding(sharding, _flat_shape(shape), BLOCK4)]
  if not isinstance(sharding, jax.sharding.NamedSharding):
    return [sharding for _ in rank1_axes(shape)]
  spec = _spec(sharding, len(shape))
  return [placement.named(sharding.mesh, [spec[a]]) for a in rank1_axes(shape)]


def _is_rank1(shape: tuple[int, ...], signed: bool) -> bool:
  return not signed and len(rank1_axes(shape)) >= 2


def zeros(shape: tuple[int, ...], signed: bool, where: Any = None) -> Int4Moment:
  """A zero :class:`Int4Moment` of ``shape``, its arrays placed to follow a
  parameter placed at ``where`` (a sharding, or None)."""
  flat = _flat_shape(shape)
  if not _is_rank1(shape, signed):
    int8.warn_if_blocks_straddle(where, flat, BLOCK4, "a 4-bit")
  codes = jnp.zeros(codes_shape(shape), jnp.uint8, device=codes_sharding(where, shape))
  if _is_rank1(shape, signed):
    lengths: list[tuple[int, ...]] = [(shape[a],) for a in rank1_axes(shape)]
  else:
    lengths = [int8.scales_shape(flat, BLOCK4)]
  scales = tuple(
    jnp.zeros(n, jnp.float32, device=s)
    for n, s in zip(lengths, scale_shardings(where, shape, signed), strict=True)
  )
  return Int4Moment(codes, scales, shape, signed)


def follow(like: Any, z: Int4Moment) -> Int4Moment:
  """Zero 4-bit moment ``z`` tied to traced parameter ``like``'s sharding
  (see ``storage.follow``): the codes like the parameter seen as pairs
  along its last axis, each scale like the slice of the parameter it
  belongs to."""
  typed = placement.typed_sharding(like)
  if typed is not None:  # explicit axes: the shardings are part of the types
    where = [codes_sharding(typed, z.shape), *scale_shardings(typed, z.shape, z.signed)]
    tied = [
      placement.tie(like, x, s)
      for x, s in zip((z.codes, *z.scales), where, strict=True)
    ]
    return Int4Moment(tied[0], tuple(tied[1:]), z.shape, z.signed)
  # Tied to an array of the codes' shape, not packed from zeros tied to the
  # parameter: XLA folds that packing into a constant of no sharding.
  pairs = _paired(jnp.reshape(like, _flat_shape(z.shape)))
  codes = placement.tie(pairs[..., 0], z.codes)
  if z.rank1:
    scales = tuple(
      placement.tie(_axis_slice(like, a), s)
      for a, s in zip(rank1_axes(z.shape), z.scales, strict=True)
    )
  else:
    view = int8.blocked(jnp.reshape(like, _flat_shape(z.shape)), BLOCK4)
    first = (Ellipsis, *([0] * (view.ndim - z.scales[0].ndim)))
    scales = (placement.tie(view[first], z.scales[0]),)
  return Int4Moment(codes, scales, z.shape, z.signed)


def _axis_slice(x: jax.Array, axis: int) -> jax.Array:
  """``x``'s first slice along every axis but ``axis``: a vector laid out
  like that axis."""
  return x[tuple(slice(None) if i == axis else 0 for i in range(x.ndim))]


def _paired(x: jax.Array, typed: Any = None) -> jax.Array:
  """``x`` (>= 1 axis) as pairs along its last axis, ``(..., ceil(n / 2),
  2)``, zero padded at the end; on a mesh with explicit axes (``typed``)
  laid out as the codes."""
  shape = tuple(x.shape)
  n = shape[-1]
  if n % 2:
    x = jnp.pad(x, [(0, 0)] * (len(shape) - 1) + [(0, 1)])
  pairs_shape = (*shape[:-1], -(-n // 2), 2)
  if typed is None:
    return x.reshape(pairs_shape)
  spec = codes_sharding(typed, shape).spec
  return int8.reshape_on(x, pairs_shape, typed, jax.sharding.PartitionSpec(*spec, None))


def _packed(index: jax.Array, like: Any) -> jax.Array:
  """4-bit indices (int32, >= 1 axis) two to a byte along the last axis.

  Written as a sum over each pair (``i0 + 16 i1``): XLA:CPU compiles that
  reduction as a loop of its own over the encoded indices, where combining
  two strided slices would put the whole encoding, moment arithmetic
  included, into an unvectorized loop over the bytes."""
  pairs = _paired(index, placement.typed_sharding(like))
  weights = jnp.broadcast_to(jnp.array([1, 16], jnp.int32), pairs.shape)
  return jnp.sum(pairs * weights, axis=-1).astype(jnp.uint8)  # low nibble first


def _unpacked(codes: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """The inverse of :func:`_packed`: int32 indices of ``shape`` (>= 1 axis).

  Each byte is broadcast to its two values and shifted by 0 or 4 (rather
  than stacking the two nibbles, a concatenation that XLA:CPU evaluates
  element by element in every loop that reads the moment)."""
  c = codes.astype(jnp.int32)
  pairs = jnp.broadcast_to(c[..., None], (*c.shape, 2))
  pairs = (
    jax.lax.shift_right_logical(pairs, jnp.broadcast_to(jnp.array([0, 4]), pairs.shape))
    & 15
  )
  typed = placement.typed_sharding(codes)
  full = (*shape[:-1], 2 * codes.shape[-1])
  if typed is None:
    index = pairs.reshape(full)
  else:
    index = int8.reshape_on(pairs, full, typed, typed.spec)
  if full[-1] != shape[-1]:
    index = jax.lax.slice_in_dim(index, 0, shape[-1], axis=len(shape) - 1)
  return index


def _decoded_values(index: jax.Array, signed: bool) -> jax.Array:
  """The code map's value of each index (float32)."""
  if not signed:  # linear: (i + 1) / 16
    return (index + 1).astype(jnp.float32) * jnp.float32(1 / 16)
  # The signed map from its definition, in a few vector operations (a table
  # lookup is a gather, or a chain of 15 selects, in every loop that reads
  # the moment): index 7 is 0 and 15 is 1; magnitude j = |index - 7| in 1..7
  # lies in decade e = floor(log2 j), the (j - 2**e)-th midpoint of 2**e
  # equal steps of [0.1, 1], times 10**(e - 2).
  j = jnp.abs(index - 7)
  e = (j >= 2).astype(jnp.int32) + (j >= 4).astype(jnp.int32)
  n = jax.lax.shift_left(jnp.int32(1), e)
  mid = 0.1 + 0.9 * (2 * (j - n) + 1).astype(jnp.float32) / (2 * n).astype(jnp.float32)
  decade = jnp.where(e == 0, jnp.float32(0.01), jnp.where(e == 1, jnp.float32(0.1), 1))
  value = jnp.where(j == 0, 0, mid * decade)
  value = jnp.where(index < 7, -value, value)
  return jnp.where(index == 15, jnp.float32(1), value)


def _nearest(y: jax.Array, signed: bool) -> jax.Array:
  """The index of the code nearest to ``y`` (in [-1, 1], or [0, 1])."""
  if not signed:
    return jnp.clip(jnp.floor(y * 16 + 0.5), 1, 16).astype(jnp.int32) - 1
  table = code_map4(True)
  mids = ((table[:-1] + table[1:]) / 2).astype(np.float32)
  index = jnp.zeros(y.shape, jnp.int32)
  for m in mids:
    index = index + (y > m).astype(jnp.int32)
  return index


def _rank1_scale(stats: tuple[jax.Array, ...], shape: tuple[int, ...]) -> jax.Array:
  """Each element's rank-1 scale: the least of its slices' maxima."""
  shaped = [
    s.reshape([shape[a] if i == a else 1 for i in range(len(shape))])
    for a, s in zip(rank1_axes(shape), stats, strict=True)
  ]
  return functools.reduce(jnp.minimum, shaped)


def _rank1_stats(x: jax.Array) -> tuple[jax.Array, ...]:
  """The maxima of the finite ``|x|`` over every slice through each axis
  longer than 1."""
  big = jnp.float32(jnp.finfo(jnp.float32).max)
  finite = jnp.where(jnp.abs(x) <= big, jnp.abs(x), 0)
  axes = rank1_axes(tuple(x.shape))
  return tuple(
    jnp.max(finite, axis=tuple(i for i in range(x.ndim) if i != a)) for a in axes
  )


def dequantize(q: Int4Moment) -> jax.Array:
  """An :class:`Int4Moment` as float32 values (see :func:`quantize`)."""
  flat = _flat_shape(q.shape)
  values = _decoded_values(_unpacked(q.codes, flat), q.signed)
  if q.rank1:
    out = values * _rank1_scale(q.scales, q.shape)
  else:
    view = int8.blocked(values, BLOCK4)
    out = int8.unblocked(
      view * int8.per_block(q.scales[0], view), flat, q.codes, BLOCK4
    )
  return out.reshape(q.shape)


def quantize(x: jax.Array, signed: bool) -> Int4Moment:
  r"""4-bit quantization of a float32 array.

  Each value is divided by its scale :math:`s` (its block's absmax over the
  finite values, or for a rank-1 second moment the least maximum of the
  slices through it) and rounded to the nearest code (:func:`code_map4`).
  A value of scale :math:`s` is off by at most :math:`0.1125\, s` when
  signed (half the widest gaps of the map: 0.6625 to 0.8875, and
  :math:`-0.8875` to :math:`-1`); unsigned, by at most :math:`s/32`,
  except that a value below :math:`s/32` is rounded up to :math:`s/16` (a
  positive second moment never becomes 0). NaN is stored as 0 (signed) or
  the smallest code, :math:`\pm\infty` as the largest codes.
  """
  shape = tuple(x.shape)
  flat = x.reshape(_flat_shape(shape))
  if _is_rank1(shape, signed):
    stats = _rank1_stats(x)
    a = int8.unit_magnitudes(x, _rank1_scale(stats, shape))
    index = _nearest(a, signed=False).reshape(flat.shape)
    return Int4Moment(_packed(index, x), stats, shape, signed)
  view = int8.blocked(flat, BLOCK4)
  (s,) = int8.block_absmax([view], len(int8.scales_shape(flat.shape, BLOCK4)))
  a = int8.unit_magnitudes(view, int8.per_block(s, view))
  index = _nearest(jnp.where(view < 0, -a, a) if signed else a, signed)
  index = int8.unblocked(index, flat.shape, flat, BLOCK4)
  return Int4Moment(_packed(index, flat), (s,), shape, signed)
