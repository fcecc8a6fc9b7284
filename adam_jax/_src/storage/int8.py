"""Block-wise dynamic 8-bit storage of a moment (Dettmers et al., ICLR 2022).

A moment stored in 8 bits is a :class:`QuantizedMoment`: one code byte per
value and one float32 absmax scale per block of ``BLOCK`` values along the
trailing axes. The step decodes it to float32 (:func:`dequantize`), runs the
Adam math, and encodes the new moment (:func:`quantize`). On a mesh with
explicit axes the blocks are formed where each block lives on one device.
"""

import math
from typing import Any
import warnings

import jax
from jax.experimental.shard_alike import shard_alike
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from adam_jax._src import placement

# The storage option's name (``mu_dtype="int8"``/``nu_dtype="int8"``).
INT8 = "int8"
# Values per block, each block with its own float32 absmax scale.
BLOCK = 256
# Tensors with fewer elements than this keep float32 moments (default of
# ``int8_min_size``): their scales would weigh more than they save.
INT8_MIN_SIZE = 4096
# Decades of the dynamic tree code maps: the signed map (first moment) spends
# 7 bits on the magnitude (decades 10^0 .. 10^-6), the unsigned one (second
# moment) 8 bits (decades 10^0 .. 10^-7).
_DECADES = {True: 6, False: 7}


def code_map(signed: bool, bits: int = 8) -> Any:
  r"""The code map of the 8-bit (or 4-bit) storage, as float64 NumPy values.

  A code's magnitude has a decade :math:`k` (:math:`10^{-k}`, given by its
  count of leading zero bits) and a linear fraction in the remaining bits:
  decade :math:`k < K` holds :math:`n_k = 2^{K-k}` values :math:`10^{-k}(0.1 +
  0.9\,j/n_k)`, :math:`j = 1..n_k`, and the last decade :math:`K` the single
  value :math:`10^{-K}`; 0 is a code. The signed map (:math:`K = 6`) holds
  :math:`\pm` 127 magnitudes and 0, the unsigned map (:math:`K = 7`) 255
  magnitudes and 0. Sorted ascending; ``±1`` (the block's absmax) is exact.

  With ``bits=4``, the maps of the 4-bit storage (Li et al., 2023): 16
  values each, the signed dynamic-exponent map with 3 exponent bits
  (:math:`\pm 0.0055` to :math:`\pm 0.8875`, 0 and 1) and the unsigned
  linear map without zero, :math:`(i + 1)/16`.

  Args:
    signed: the first moment's map (True) or the second moment's (False).
    bits: 8 (the default) or 4.

  Returns:
    A float64 NumPy array of the 255 (signed) or 256 (unsigned) code values,
    or of 16 with ``bits=4``.

  Example:
    >>> import adam_jax
    >>> signed = adam_jax.code_map(True)
    >>> print(len(signed), signed.min(), signed.max())
    255 -1.0 1.0
    >>> print(signed[127:131].round(9).tolist())  # 0 and the last decades' codes
    [0.0, 1e-06, 5.5e-06, 1e-05]
    >>> print(len(adam_jax.code_map(False)), adam_jax.code_map(False)[1])
    256 1e-07
    >>> print(adam_jax.code_map(True, bits=4)[7:].round(4).tolist())
    [0.0, 0.0055, 0.0325, 0.0775, 0.2125, 0.4375, 0.6625, 0.8875, 1.0]
    >>> print(adam_jax.code_map(False, bits=4)[:2].tolist())
    [0.0625, 0.125]

  References:
    Dettmers, Lewis, Shleifer & Zettlemoyer, `8-bit Optimizers via Block-wise
    Quantization <https://arxiv.org/abs/2110.02861>`_, ICLR 2022.

    Dettmers, `8-Bit Approximations for Parallelism in Deep Learning
    <https://arxiv.org/abs/1511.04561>`_, ICLR 2016 (the dynamic tree map).

    Li, Chen & Zhu, `Memory Efficient Optimizers with 4-bit States
    <https://arxiv.org/abs/2309.01507>`_, NeurIPS 2023.
  """
  import numpy as np

  if bits == 4:
    from adam_jax._src.storage import int4  # int4 builds on this module

    return int4.code_map4(signed)
  if bits != 8:
    raise ValueError(f"bits must be 8 or 4, got bits={bits!r}.")

  top = _DECADES[signed]
  mags = [0.0]
  for k in range(top, -1, -1):
    n = 2 ** (top - k)
    if k == top:
      mags.append(10.0**-k)
    else:
      mags += [10.0**-k * (0.1 + 0.9 * j / n) for j in range(1, n + 1)]
  mags_arr = np.array(mags)
  if signed:
    return np.concatenate([-mags_arr[:0:-1], mags_arr])
  return mags_arr


@jax.tree_util.register_pytree_node_class
class QuantizedMoment:
  """A moment stored block-wise in 8 bits: codes and one scale per block.

  ``codes`` has the parameter's shape (``int8`` for the signed first moment,
  ``uint8`` for the second); ``scales`` (float32) holds the absmax of each
  block of ``BLOCK = 256`` consecutive values along the trailing axes (the
  fewest trailing axes holding at least 256 values), so its shape is the
  parameter's leading axes followed by the number of blocks. A value is
  ``code_map[code] * scale``. It is a pytree of those two arrays, so
  ``jit``, ``tree.map`` and checkpointing handle it like any state.

  Example:
    >>> import jax.numpy as jnp
    >>> import adam_jax
    >>> state = adam_jax.adam(mu_dtype="int8", nu_dtype="int8").init(
    ...   {"w": jnp.ones((64, 512)), "b": jnp.ones(512)})
    >>> mu = state[0].mu["w"]
    >>> mu.codes.dtype, mu.codes.shape, mu.scales.shape
    (dtype('int8'), (64, 512), (64, 2))
    >>> state[0].mu["b"].dtype  # under 4096 elements: float32
    dtype('float32')
  """

  def __init__(self, codes: Any, scales: Any):
    self.codes = codes
    self.scales = scales

  def tree_flatten(self):
    return (self.codes, self.scales), None

  @classmethod
  def tree_unflatten(cls, aux, children):
    del aux
    return cls(*children)

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(jnp.shape(self.codes))

  @property
  def signed(self) -> bool:
    return getattr(self.codes, "dtype", None) == jnp.int8

  def dequantize(self) -> jax.Array:
    """The stored moment as a float32 array of the parameter's shape."""
    return dequantize(self)

  def __repr__(self) -> str:
    # After a tree.map the leaves may be anything (shapes, None, ...).
    dtype, shape = getattr(self.codes, "dtype", None), getattr(self.codes, "shape", "?")
    kind = {"int8": "signed", "uint8": "unsigned"}.get(getattr(dtype, "name", ""), "?")
    return f"QuantizedMoment({kind}, shape={shape})"


def is_quantized(x: Any) -> bool:
  return isinstance(x, QuantizedMoment)


def block_axis(shape: tuple[int, ...], block: int = BLOCK) -> int:
  """The first axis of the trailing axes that blocks run along: the last
  axis ``a`` with ``prod(shape[a:]) >= BLOCK`` (0 when there is none)."""
  for a in range(len(shape) - 1, -1, -1):
    if math.prod(shape[a:]) >= block:
      return a
  return 0


def block_rows(shape: tuple[int, ...], block: int = BLOCK) -> int:
  """How many whole slices along :func:`block_axis` make one block: as many
  as hold at most ``BLOCK`` values together (exactly ``BLOCK`` when the
  axes after it hold a divisor of ``BLOCK``)."""
  return max(1, block // math.prod(shape[block_axis(shape, block) + 1 :]))


def flat_blocks(shape: tuple[int, ...]) -> bool:
  """Whether the blocks are those of the flattened array (``BLOCK``
  consecutive values each, padded at its end only), as in a flat chunk of
  packed leaves."""
  if not shape:
    return True
  a, rows = block_axis(shape), block_rows(shape)
  full = rows * math.prod(shape[a + 1 :]) == BLOCK
  return full and (a == 0 or shape[a] % rows == 0)


def scales_shape(shape: tuple[int, ...], block: int = BLOCK) -> tuple[int, ...]:
  if not shape:
    return (1,)
  a = block_axis(shape, block)
  return (*shape[:a], -(-shape[a] // block_rows(shape, block)))


def blocked(x: jax.Array, block: int = BLOCK) -> jax.Array:
  """``x`` viewed as its blocks: ``lead + (blocks, rows) + trailing``, the
  block axis zero padded at the end (``lead + (blocks,)`` is the scales'
  shape, ``rows`` is :func:`block_rows`).

  A block is whole slices along the block axis, so the view only splits
  that axis: the trailing axes keep their sharding, and a block spread over
  shards costs a reduction of its scale across them, not a gather.
  """
  shape = tuple(x.shape)
  if not shape:
    return blocked(x.reshape(1), block)
  a, rows = block_axis(shape, block), block_rows(shape, block)
  blocks = -(-shape[a] // rows)
  typed, spec = _block_layout(x, shape, block)
  if typed is not None:  # explicit mesh axes: each block on one device first
    x = jax.sharding.reshard(x, placement.on(typed, _block_friendly(spec, len(shape))))
  if blocks * rows != shape[a]:
    widths = [(0, 0)] * len(shape)
    widths[a] = (0, blocks * rows - shape[a])
    x = jnp.pad(x, widths)
  view = (*shape[:a], blocks, rows, *shape[a + 1 :])
  return reshape_on(x, view, typed, _block_friendly(spec, len(view)))


def unblocked(
  x: jax.Array, shape: tuple[int, ...], like: Any = None, block: int = BLOCK
) -> jax.Array:
  """The inverse of :func:`blocked`: ``x`` (blocks) back in ``shape``, laid
  out like ``like`` (on a mesh with explicit axes)."""
  if not shape:
    flat_like = None if like is None else like.reshape(1)
    return unblocked(x, (1,), flat_like, block).reshape(())
  a = block_axis(shape, block)
  typed, spec = (None, ()) if like is None else _block_layout(like, shape, block)
  padded = (*shape[:a], x.shape[a] * x.shape[a + 1], *shape[a + 1 :])
  x = reshape_on(x, padded, typed, _block_friendly(spec, len(shape)))
  if padded[a] != shape[a]:
    x = jax.lax.slice_in_dim(x, 0, shape[a], axis=a)
  return x if typed is None else jax.sharding.reshard(x, typed)


def per_block(scales: jax.Array, view: jax.Array) -> jax.Array:
  """``scales`` broadcastable against the blocked view they belong to."""
  return scales.reshape(scales.shape + (1,) * (view.ndim - scales.ndim))


def _block_layout(
  x: Any, shape: tuple[int, ...], block: int
) -> tuple[Any, tuple[Any, ...]]:
  """``(typed, spec)``: ``x``'s sharding when its type carries one (else
  None) and the spec its blocks' leading axes keep (the scales')."""
  typed = placement.typed_sharding(x)
  if typed is None:
    return None, ()
  return typed, tuple(scales_sharding(typed, shape, block).spec)


def reshape_on(x: jax.Array, shape: tuple[int, ...], typed: Any, spec: P) -> jax.Array:
  """``x.reshape(shape)``; on a mesh with explicit axes (``typed``) the
  output's sharding must be named: ``spec`` on that mesh."""
  if typed is None:
    return x.reshape(shape)
  return jax.lax.reshape(x, shape, out_sharding=placement.on(typed, spec))


def _block_friendly(spec: tuple[Any, ...], ndim: int) -> P:
  """A parameter layout whose blocks each live on one device: the scales'
  ``spec`` on the leading axes and the block axis, the rest unsplit."""
  return P(*spec, *([None] * (ndim - len(spec))))


def quantized_zeros(
  shape: tuple[int, ...], signed: bool, placement: Any = None
) -> QuantizedMoment:
  """A zero :class:`QuantizedMoment` of ``shape``: the codes placed at
  ``placement`` (a sharding, or None for the default placement) and the
  scales laid out to match."""
  warn_if_blocks_straddle(placement, shape)
  codes = jnp.zeros(shape, jnp.int8 if signed else jnp.uint8, device=placement)
  scales = jnp.zeros(
    scales_shape(shape), jnp.float32, device=scales_sharding(placement, shape)
  )
  return QuantizedMoment(codes, scales)


def warn_if_blocks_straddle(
  sharding: Any, shape: tuple[int, ...], block: int = BLOCK, what: str = "an 8-bit"
) -> None:
  """Warns when ``sharding`` splits the block axis so that the blocked view
  (``blocks`` x ``rows`` along it, see :func:`blocked`) cannot be split the
  same way: neither do the shards hold whole blocks, nor does each block
  split evenly over them. XLA then gathers the moment in every step."""
  if not isinstance(sharding, jax.sharding.NamedSharding) or not shape:
    return
  a, rows = block_axis(shape, block), block_rows(shape, block)
  blocks = -(-shape[a] // rows)
  spec = tuple(sharding.spec) + (None,) * (len(shape) - len(sharding.spec))
  pieces = placement.shards(sharding, spec[a])
  if blocks % pieces == 0 or (pieces % blocks == 0 and rows % (pieces // blocks) == 0):
    return
  warnings.warn(
    f"{what} moment of a parameter of shape {shape} laid out as"
    f" {sharding.spec}: its {blocks} blocks of {rows} slices along axis {a}"
    f" do not split evenly over the {pieces} shards of that axis, so a jitted"
    " step gathers the moment. Lay that axis out over a number of shards"
    f" that divides {blocks}, or keep this parameter's moments in float32"
    " (a larger int8_min_size).",
    stacklevel=2,
  )


def scales_sharding(sharding: Any, shape: tuple[int, ...], block: int = BLOCK) -> Any:
  """The scales follow the parameter's leading axes, and its block axis
  when each shard along it holds whole blocks; a block spread over shards
  has one scale for all of them, so the scales are not split there."""
  if sharding is None or isinstance(sharding, jax.sharding.SingleDeviceSharding):
    return sharding
  if not isinstance(sharding, jax.sharding.NamedSharding):
    return None
  if not shape:
    return placement.named(sharding.mesh, [])
  a = block_axis(shape, block)
  spec = tuple(sharding.spec) + (None,) * (len(shape) - len(sharding.spec))
  whole = (
    shape[a] % (placement.shards(sharding, spec[a]) * block_rows(shape, block)) == 0
  )
  return placement.named(sharding.mesh, [*spec[:a], spec[a] if whole else None])


def _magnitudes(index: jax.Array, top: int) -> jax.Array:
  """Decodes magnitude indices (int32 in ``[0, 2**(top+1))``) of the code map
  with decades ``0..top``, without a table lookup (XLA:CPU does not fuse a
  gather, and this is a few vector instructions)."""
  e = 31 - jax.lax.clz(jnp.maximum(index, 1))  # floor(log2(index)): decade top - e
  n = jax.lax.shift_left(jnp.int32(1), e)
  inv_n = jax.lax.bitcast_convert_type(jax.lax.shift_left(127 - e, 23), jnp.float32)
  j = (index - n + 1).astype(jnp.float32)
  frac = jnp.where(e == 0, j, 0.1 + 0.9 * (j * inv_n))
  decade = jnp.ones(index.shape, jnp.float32)
  for k in range(1, top + 1):
    decade = jnp.where(e == top - k, jnp.float32(10.0**-k), decade)
  return jnp.where(index == 0, jnp.float32(0), frac * decade)


def _indices(a: jax.Array, top: int, positive: jax.Array | None) -> jax.Array:
  r"""The index of the nearest code magnitude to ``a`` (float32 in [0, 1]).

  The decade :math:`k` is the number of bounds :math:`10^{-i}` (``float32``,
  :math:`1 \le i \le` ``top``) above ``a``: one pass over the bounds, from
  the largest, picks the decade's scale :math:`10^k` and code count
  :math:`n_k = 2^{\mathrm{top} - k}` together. ``a`` is scaled into
  :math:`[0.1, 1]` by one product with :math:`10^k` (exact in ``float32``);
  within a decade the codes are evenly spaced, and the decades' ends are
  codes, so rounding there finds the nearest. Where ``positive`` (the second
  moment: a zero would divide the step by ``eps``) a value never rounds to 0.
  """
  ten = jnp.ones(a.shape, jnp.float32)
  n = jnp.full(a.shape, jnp.float32(2**top))
  bottom = jnp.zeros(a.shape, bool)
  for i in range(1, top + 1):
    bottom = a < jnp.float32(10.0**-i)  # below the bound: decade i or lower
    ten = jnp.where(bottom, jnp.float32(10.0**i), ten)
    n = jnp.where(bottom, jnp.float32(2 ** (top - i)), n)
  f = a * ten
  j = jnp.where(bottom, f * n, (f - 0.1) * (n / 0.9))
  j = jnp.minimum(jnp.floor(j + 0.5), n)
  index = (n - 1 + j).astype(jnp.int32)  # small integers: exact in float32
  if positive is not None:
    index = jnp.maximum(index, positive.astype(jnp.int32))
  return index


def dequantize(q: QuantizedMoment) -> jax.Array:
  """A :class:`QuantizedMoment` as float32 values (see :func:`quantize`)."""
  shape = q.shape
  codes = blocked(q.codes.astype(jnp.int32))
  if q.signed:
    mags = _magnitudes(jnp.abs(codes), _DECADES[True])
    mags = jnp.where(codes < 0, -mags, mags)
  else:
    mags = _magnitudes(codes, _DECADES[False])
  return unblocked(mags * per_block(q.scales, codes), shape, q.codes)


def quantize(xs: list[jax.Array], signed: list[bool]) -> list[QuantizedMoment]:
  r"""Block-wise dynamic quantization of same-shaped float32 arrays.

  Each block of ``BLOCK`` values is divided by its absmax :math:`s` (over
  its finite values) and every value rounded to the nearest code of the
  dynamic tree map (:func:`code_map`). So the block's absmax is stored
  exactly, 0 stays 0, and a value in decade :math:`k` is off by at most
  :math:`0.45\, s\, 10^{-k} / n_k` (at most :math:`0.0071 s` signed and
  :math:`0.0036 s` unsigned); below the last decade, at most half the
  smallest code (signed) or up to the smallest code (unsigned, rounded up:
  a positive second moment never becomes 0). A non-finite value poisons only
  itself: NaN is stored as 0 and :math:`\pm\infty` as :math:`\pm s`. Values
  below float32's smallest normal may be stored as 0 (subnormals flush).

  The absmaxes of all ``xs`` come from one reduction (XLA:CPU compiles a
  variadic reduction with its producers fused, where it runs a single one
  through a slower library kernel).
  """
  shape = tuple(xs[0].shape)
  blocks = [blocked(x) for x in xs]
  scales = block_absmax(blocks, len(scales_shape(shape)))
  out = []
  for b, s, sign in zip(blocks, scales, signed, strict=True):
    a = unit_magnitudes(b, per_block(s, b))
    index = _indices(a, _DECADES[sign], None if sign else b > 0)
    if sign:
      codes = jnp.where(b < 0, -index, index).astype(jnp.int8)
    else:
      codes = index.astype(jnp.uint8)
    out.append(QuantizedMoment(unblocked(codes, shape, xs[0]), s))
  return out


def block_absmax(views: list[jax.Array], lead: int) -> tuple[jax.Array, ...]:
  """The absmax over the finite values of each block of each blocked view
  (axes from ``lead`` on are a block's), from one variadic reduction."""
  big = jnp.float32(jnp.finfo(jnp.float32).max)
  finite = [jnp.where(jnp.abs(b) <= big, jnp.abs(b), 0) for b in views]
  zero = tuple(jnp.float32(0) for _ in views)
  axis = tuple(range(lead, finite[0].ndim))

  def pick(acc, new):
    return tuple(jax.lax.max(x, y) for x, y in zip(acc, new, strict=True))

  return tuple(jax.lax.reduce(tuple(finite), zero, pick, axis))


def unit_magnitudes(x: jax.Array, s: jax.Array) -> jax.Array:
  """``|x| / s`` in [0, 1] for a scale ``s`` (broadcastable, >= the finite
  ``|x|``): NaN gives 0 and an infinity 1; a zero scale divides by 1."""
  # Scaled by a power of 2 first, so that neither a huge scale nor a tiny
  # one leaves the normal range when XLA divides through its reciprocal.
  pre = jnp.where(s > 2.0**100, 2.0**-100, jnp.where(s < 2.0**-100, 2.0**100, 1.0))
  a = (jnp.abs(x) * pre) / jnp.where(s > 0, s * pre, 1)
  return jnp.where(a < 1, a, jnp.where(a >= 1, 1, 0))  # NaN -> 0, inf -> 1


def follow(like: Any, z: QuantizedMoment) -> QuantizedMoment:
  """Zero 8-bit moment ``z`` tied to traced parameter ``like``'s sharding:
  the codes as the parameter, the scales as one value per block of it (see
  ``storage.follow``)."""
  codes = shard_alike(like, z.codes)[1]
  typed = placement.typed_sharding(like)
  if typed is None:
    view = blocked(like)
    first = (Ellipsis, *([0] * (view.ndim - z.scales.ndim)))
    scales = shard_alike(view[first], z.scales)[1]
  else:  # explicit axes: the scales' sharding is part of their type
    scales = jnp.zeros(
      z.scales.shape, jnp.float32, out_sharding=scales_sharding(typed, z.shape)
    )
  return QuantizedMoment(codes, scales)
