r"""A factored second moment (Shazeer & Stern, ICML 2018, Adafactor).

A second moment :math:`v` of a tensor with at least two axes is kept as its
means over each of its two largest axes: with :math:`a < b` those axes,
:math:`R = \operatorname{mean}_b v` (the "row" statistics) and :math:`C =
\operatorname{mean}_a v` (the "columns"), which take the space of one slice
each. It is read back as the rank-1 reconstruction

.. math::

  \hat v_{\dots i \dots j \dots} = R_{\dots i \dots} C_{\dots j \dots} /
  \operatorname{mean}_a R

Since the moment's update is linear, the means of :math:`\beta_2 \hat v +
(1 - \beta_2) g^2` are exactly Adafactor's :math:`\beta_2 R + (1 - \beta_2)
\operatorname{mean}_b g^2` (and the same for :math:`C`), so storing the
means of the rule's new :math:`v_t` is Adafactor's factored update, and the
Adam step reads its reconstruction.
"""

from typing import Any

import jax
import jax.numpy as jnp

from adam_jax._src import placement

# The storage option's name (``nu_dtype="factored"``).
FACTORED = "factored"


def factored_axes(shape: tuple[int, ...]) -> tuple[int, int]:
  """The two largest axes (the later one on a tie), in order: as optax's
  ``scale_by_factored_rms`` picks them."""
  ranked = sorted(range(len(shape)), key=lambda a: (shape[a], a))
  a, b = ranked[-2], ranked[-1]
  return min(a, b), max(a, b)


@jax.tree_util.register_pytree_node_class
class FactoredMoment:
  """A second moment kept as its means over two axes (float32).

  ``row`` is the mean over axis ``axes[1]`` (the parameter's shape without
  it) and ``col`` the mean over ``axes[0]``; ``shape`` and ``axes`` are
  static.

  Example:
    >>> import jax.numpy as jnp
    >>> import adam_jax
    >>> state = adam_jax.adam(nu_dtype="factored").init(
    ...   {"w": jnp.ones((64, 512)), "b": jnp.ones(512)})
    >>> nu = state[0].nu["w"]
    >>> nu.row.shape, nu.col.shape
    ((64,), (512,))
    >>> state[0].nu["b"].dtype  # a vector keeps a full float32 moment
    dtype('float32')
  """

  def __init__(self, row: Any, col: Any, shape: tuple, axes: tuple[int, int]):
    self.row = row
    self.col = col
    self.shape = tuple(shape)
    self.axes: tuple[int, int] = (int(axes[0]), int(axes[1]))

  def tree_flatten(self):
    return (self.row, self.col), (self.shape, self.axes)

  @classmethod
  def tree_unflatten(cls, aux, children):
    return cls(*children, *aux)

  @property
  def signed(self) -> bool:
    return False

  def dequantize(self) -> jax.Array:
    """The reconstructed second moment, a float32 array of the parameter's
    shape."""
    return dequantize(self)

  def __repr__(self) -> str:
    return f"FactoredMoment(shape={self.shape}, axes={self.axes})"


def is_factored(x: Any) -> bool:
  return isinstance(x, FactoredMoment)


def _without(shape: tuple[Any, ...], axis: int) -> tuple[Any, ...]:
  return shape[:axis] + shape[axis + 1 :]


def stat_shardings(sharding: Any, shape: tuple[int, ...]) -> tuple[Any, Any]:
  """The row and column statistics are laid out like the parameter without
  the axis each is a mean over."""
  if not isinstance(sharding, jax.sharding.NamedSharding):
    return sharding, sharding
  spec = list(sharding.spec) + [None] * (len(shape) - len(sharding.spec))
  a, b = factored_axes(shape)
  return (
    placement.named(sharding.mesh, spec[:b] + spec[b + 1 :]),
    placement.named(sharding.mesh, spec[:a] + spec[a + 1 :]),
  )


def zeros(shape: tuple[int, ...], where: Any = None) -> FactoredMoment:
  """A zero :class:`FactoredMoment` of a parameter of ``shape`` placed at
  ``where`` (a sharding, or None)."""
  a, b = factored_axes(shape)
  row_at, col_at = stat_shardings(where, shape)
  row = jnp.zeros(_without(shape, b), jnp.float32, device=row_at)
  col = jnp.zeros(_without(shape, a), jnp.float32, device=col_at)
  return FactoredMoment(row, col, shape, factored_axes(shape))


def follow(like: Any, z: FactoredMoment) -> FactoredMoment:
  """Zero factored moment ``z`` tied to traced parameter ``like``'s
  sharding (see ``storage.follow``): each statistic like a slice of it."""
  typed = placement.typed_sharding(like)
  if typed is not None:  # explicit axes: the shardings are part of the types
    row_at, col_at = stat_shardings(typed, z.shape)
    return FactoredMoment(
      placement.tie(like, z.row, row_at),
      placement.tie(like, z.col, col_at),
      z.shape,
      z.axes,
    )
  a, b = z.axes
  row = placement.tie(jnp.take(like, 0, axis=b), z.row)
  col = placement.tie(jnp.take(like, 0, axis=a), z.col)
  return FactoredMoment(row, col, z.shape, z.axes)


def dequantize(f: FactoredMoment) -> jax.Array:
  """The reconstruction :math:`R C / \\operatorname{mean}_a R` (0 where the
  statistics are 0), saturated at float32's largest value."""
  a, b = f.axes
  mean = jnp.mean(f.row, axis=a)  # the shape without a and b
  ratio = f.col / jnp.expand_dims(jnp.where(mean > 0, mean, 1), b - 1)
  v = jnp.expand_dims(f.row, b) * jnp.expand_dims(ratio, a)
  return jnp.minimum(v, jnp.finfo(jnp.float32).max)


def factored(v: jax.Array) -> FactoredMoment:
  """The means of ``v`` (float32, >= 0) over its two largest axes. Each
  element is divided by the axis' length before the sum, so that the mean
  of values near float32's largest stays finite."""
  shape = tuple(v.shape)
  a, b = factored_axes(shape)
  row = jnp.sum(v * jnp.float32(1 / shape[b]), axis=b)
  col = jnp.sum(v * jnp.float32(1 / shape[a]), axis=a)
  return FactoredMoment(row, col, shape, factored_axes(shape))
