"""The functions the benchmark compiles and times, and the optimizers it runs.

``make_step`` is the step a user writes around an optimizer; the others are
reference points on the same tree: ``flat_adam_step`` (Adam's arithmetic as one
pass over flat arrays), ``tree_floor_step`` (``p - lr * g`` per leaf, no state)
and ``call_floor_step`` (no arithmetic, only the jitted call). With
``--state-formats``, ``make_train_step`` also computes the gradient inside the
step, as a training step does.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

import adam_jax

LEARNING_RATE = 1e-3
BYTES_PER_PARAM = 28  # Adam's one pass: read p, m, v, g; write p, m, v (float32)

STATE_FORMATS: dict[str, tuple[Any, Any]] = {
  "bf16": (jnp.bfloat16, jnp.bfloat16),
  "int8": ("int8", "int8"),
  "int4": ("int4", "int4"),
  "int4_factored": ("int4", "factored"),
}
"""``--state-formats``: the moment storages timed besides float32, as
adam_jax's ``(mu_dtype, nu_dtype)``."""

# The ``--state-formats`` training step: the gradient of a least-squares loss
# computed in the jitted step, so that (as in training) it is produced there
# rather than an input the step must keep. A leaf of two or more axes is a
# linear layer over its first axis (batch TRAIN_BATCH): its gradient is a
# matmul's output in the leaf's shape. A vector (or scalar) scales its input
# elementwise: its gradient is elementwise too, which XLA may fuse into the
# optimizer's own loops.
TRAIN_BATCH = 8
TRAIN_SEED = 2


def make_step(tx: optax.GradientTransformation) -> Callable[..., Any]:
  """The step a user writes: ``tx``'s update, then ``optax.apply_updates``.

  Args:
    tx: the optimizer.

  Returns:
    ``step(params, state, grads) -> (params, state)``.
  """

  def step(params: Any, state: Any, grads: Any) -> tuple[Any, Any]:
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return step


def flat_adam_step(
  p: jax.Array, m: jax.Array, v: jax.Array, count: jax.Array, g: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Adam (optax's defaults) as one pass over flat float32 arrays."""
  b1, b2, eps = 0.9, 0.999, 1e-8
  count = count + 1
  t = count.astype(jnp.float32)
  m = b1 * m + (1 - b1) * g
  v = b2 * v + (1 - b2) * (g * g)
  m_hat = m / (1 - b1**t)
  v_hat = v / (1 - b2**t)
  p = p - LEARNING_RATE * m_hat / (jnp.sqrt(v_hat) + eps)
  return p, m, v, count


def tree_floor_step(params: Any, grads: Any) -> Any:
  """The least any optimizer step does on the tree: ``p - lr * g`` per leaf
  (no state), so the runtime's per-leaf cost without any optimizer math."""
  return jax.tree.map(lambda p, g: p - LEARNING_RATE * g, params, grads)


def call_floor_step(params: Any, grads: Any) -> Any:
  """The parameters, unchanged (donated, so returned in place): only the cost
  of a jitted call that takes the tree and its gradients and returns the tree."""
  del grads
  return params


def train_inputs(params: Any) -> Any:
  """An input for each leaf: ``(TRAIN_BATCH, p.shape[0])`` for a leaf of two
  or more axes, else an array of the leaf's shape."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(TRAIN_SEED), len(leaves))
  inputs = [
    jax.random.normal(
      k, (TRAIN_BATCH, p.shape[0]) if p.ndim >= 2 else p.shape, jnp.float32
    )
    for k, p in zip(keys, leaves, strict=True)
  ]
  return jax.tree.unflatten(treedef, inputs)


def _least_squares(params: Any, inputs: Any) -> jax.Array:
  total = jnp.zeros([], jnp.float32)
  for p, x in zip(jax.tree.leaves(params), jax.tree.leaves(inputs), strict=True):
    y = jnp.tensordot(x, p, axes=1) if p.ndim >= 2 else x * p
    total = total + jnp.sum(jnp.square(y - 1))
  return total


def make_train_step(tx: optax.GradientTransformation) -> Callable[..., Any]:
  """A training step: the least-squares gradient, then ``tx``'s update.

  Args:
    tx: the optimizer.

  Returns:
    ``train_step(params, state, inputs) -> (params, state)``, where ``inputs``
    comes from ``train_inputs``.
  """

  def train_step(params: Any, state: Any, inputs: Any) -> tuple[Any, Any]:
    grads = jax.grad(_least_squares)(params, inputs)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return train_step


def optimizers(
  per_leaf: bool, state_formats: bool = False
) -> dict[str, Callable[[], optax.GradientTransformation]]:
  """The optimizers to time on each tree, by result key, as factories.

  Args:
    per_leaf: add ``adam_jax_per_leaf`` (``pack_small_leaves=False``).
    state_formats: add ``adam_jax_<format>`` for each of ``STATE_FORMATS``.

  Returns:
    ``optax`` and ``adam_jax`` first, then the optional ones, in the order
    they are compiled and timed.
  """
  result: dict[str, Callable[[], optax.GradientTransformation]] = {
    "optax": lambda: optax.adam(LEARNING_RATE),
    "adam_jax": lambda: adam_jax.adam(LEARNING_RATE),
  }
  if per_leaf:
    result["adam_jax_per_leaf"] = lambda: adam_jax.adam(
      LEARNING_RATE, pack_small_leaves=False
    )
  if state_formats:
    for label, (mu, nu) in STATE_FORMATS.items():
      result[f"adam_jax_{label}"] = functools.partial(
        adam_jax.adam, LEARNING_RATE, mu_dtype=mu, nu_dtype=nu
      )
  return result
