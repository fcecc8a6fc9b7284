"""The vmapped update: one jitted step over a batch of independent problems.

``jax.jit(jax.vmap(step))`` runs ``make_step``'s step (the update and
``optax.apply_updates``) on ``batch`` independent problems at once, each a
parameter tree of one float32 leaf of ``leaf_size`` elements with its own
optimizer state (``jax.vmap(tx.init)``). It is timed for ``VMAP_OPTIMIZERS``,
interleaved in the same rounds with one unbatched ``adam_jax.adam`` step on a
single problem. The ratio of the vmapped step to ``batch`` unbatched steps
checks that batching problems with ``jax.vmap`` costs at most about as much as
stepping them one at a time.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

import adam_jax
from adam_jax.benchmarks import steps as steps_lib
from adam_jax.benchmarks import timing
from adam_jax.benchmarks import trees

VMAP_BATCH = 64
VMAP_LEAF_SIZE = 4096
QUICK_VMAP_BATCH = 8
QUICK_VMAP_LEAF_SIZE = 256

VMAP_OPTIMIZERS: dict[str, Callable[[], optax.GradientTransformation]] = {
  "adam_jax": lambda: adam_jax.adam(steps_lib.LEARNING_RATE),
  "adam_jax_bf16": functools.partial(
    adam_jax.adam,
    steps_lib.LEARNING_RATE,
    mu_dtype=jnp.bfloat16,
    nu_dtype=jnp.bfloat16,
  ),
  "optax": lambda: optax.adam(steps_lib.LEARNING_RATE),
}
"""The optimizers whose vmapped step is timed, by result key."""

_SINGLE = "single"  # the unbatched adam_jax step's variant key


def vmap_sizes(quick: bool) -> tuple[int, int]:
  """``(batch, leaf_size)`` of the vmapped measurement (tiny with ``quick``)."""
  if quick:
    return QUICK_VMAP_BATCH, QUICK_VMAP_LEAF_SIZE
  return VMAP_BATCH, VMAP_LEAF_SIZE


def _problems(batch: int, leaf_size: int) -> tuple[Any, Any]:
  """``(params, grads)``: ``batch`` problems of one leaf, stacked on axis 0."""
  shape = (batch, leaf_size)
  params = jax.random.normal(jax.random.key(trees.PARAMS_SEED), shape, jnp.float32)
  grads = jax.random.normal(jax.random.key(trees.GRADS_SEED), shape, jnp.float32)
  return {"w": params * jnp.float32(0.02)}, {"w": grads * jnp.float32(1e-3)}


def _variants(batch: int, leaf_size: int) -> list[tuple[timing.Variant, Any]]:
  """Each variant to time with the function it compiles: the vmapped steps,
  then the unbatched adam_jax step on the first problem."""
  params, grads = _problems(batch, leaf_size)
  result = []
  for key, make in VMAP_OPTIMIZERS.items():
    tx = make()
    state = jax.vmap(tx.init)(params)
    p = jax.tree.map(jnp.copy, params)  # each variant donates its own
    v = timing.Variant(key, carry=(p, state), extra=(grads,))
    result.append((v, jax.vmap(steps_lib.make_step(tx))))
  tx = adam_jax.adam(steps_lib.LEARNING_RATE)
  p, g = jax.tree.map(lambda x: x[0], (params, grads))
  single = timing.Variant(_SINGLE, carry=(p, tx.init(p)), extra=(g,))
  result.append((single, steps_lib.make_step(tx)))
  jax.block_until_ready([(v.carry, v.extra) for v, _ in result])
  return result


def _record(timed: list[timing.Variant], batch: int, leaf_size: int) -> dict[str, Any]:
  """The ``vmap`` entry of ``run``'s record, from the timed variants."""
  *vmapped, single = timed
  record: dict[str, Any] = {
    "batch": batch,
    "leaf_size": leaf_size,
    "single_step_median_s": timing.median(single.step_s),
    "single_step_s": single.step_s,
    "results": {},
  }
  for v in vmapped:
    record["results"][v.key] = {
      "step_median_s": timing.median(v.step_s),
      "step_s": v.step_s,
      "compile_median_s": timing.median(v.compile_s),
      "ratio_to_batch_x_single": timing.median(
        a / (batch * b) for a, b in zip(v.step_s, single.step_s, strict=True)
      ),
    }
  return record


def bench_vmap(
  *, quick: bool, steps: int, log: Callable[[str], None]
) -> dict[str, Any]:
  """Times the vmapped steps and the unbatched one; returns the ``vmap`` record.

  Args:
    quick: the tiny batch and leaf of ``vmap_sizes``.
    steps: timed rounds after the warm-up rounds.
    log: called with each progress message.

  Returns:
    ``batch``, ``leaf_size``, the unbatched adam_jax step's
    ``single_step_median_s`` and ``single_step_s``, and ``results``, which
    maps each of ``VMAP_OPTIMIZERS`` to its vmapped step's ``step_median_s``,
    ``step_s``, ``compile_median_s`` and ``ratio_to_batch_x_single``: the
    median over rounds of its step time over ``batch`` times the unbatched
    step's in the same round.
  """
  batch, leaf_size = vmap_sizes(quick)
  log(f"[vmap] {batch} problems of one {leaf_size}-element leaf: compiling")
  variants = _variants(batch, leaf_size)
  for v, fn in variants:
    timing.compile_variant(v, fn, (0, 1))
  timed = [v for v, _ in variants]
  log(
    f"[vmap] timing {timing.WARMUP_ROUNDS} warm-up + {steps} rounds of "
    f"{len(timed)} steps"
  )
  timing.time_rounds(timed, steps)
  record = _record(timed, batch, leaf_size)
  ratios = ", ".join(
    f"{key} {r['ratio_to_batch_x_single']:.3f}" for key, r in record["results"].items()
  )
  log(f"[vmap] vmapped step / ({batch} x single step): {ratios}")
  return record
