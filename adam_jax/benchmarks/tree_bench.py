"""One tree's benchmark: build the inputs, compile, time, make the record.

``bench_tree`` runs every optimizer of ``steps.optimizers`` on one tree, with
the flat one-pass Adam and the two floors (``steps.tree_floor_step`` and
``steps.call_floor_step``) timed in the same rounds, and, with
``state_formats``, the training steps of adam_jax's moment formats.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import gc
from typing import Any

import jax
import jax.numpy as jnp
import optax

from adam_jax.benchmarks import steps as steps_lib
from adam_jax.benchmarks import timing
from adam_jax.benchmarks import trees

Log = Callable[[str], None]
Optimizers = dict[str, Callable[[], optax.GradientTransformation]]


@dataclasses.dataclass
class _TreeVariants:
  """Everything timed on one tree, in the order of its records.

  Attributes:
    n_params: parameters in the tree.
    n_leaves: leaves in the tree.
    optimizers: ``steps.optimizers``, the factories by result key.
    variants: the optimizers' steps, by result key.
    flat: the flat one-pass Adam over as many elements.
    floors: ``tree_floor`` and ``call_floor``.
    trains: the training steps (``state_formats`` only), by optimizer key.
  """

  n_params: int
  n_leaves: int
  optimizers: Optimizers
  variants: dict[str, timing.Variant]
  flat: timing.Variant
  floors: list[timing.Variant]
  trains: dict[str, timing.Variant]

  def timed(self) -> list[timing.Variant]:
    """The variants in the order each round calls them."""
    return [*self.variants.values(), self.flat, *self.floors, *self.trains.values()]


def _optimizer_variants(
  name: str, quick: bool, optimizers: Optimizers, grads: Any
) -> dict[str, timing.Variant]:
  """Fresh parameters and the initial state of each optimizer."""
  variants = {}
  for key, make in optimizers.items():
    tx = make()
    params = trees.build_tree(name, quick=quick)
    state = tx.init(params)
    variant = timing.Variant(key, carry=(params, state), extra=(grads,))
    variant.state_bytes = timing.state_bytes(state)
    variants[key] = variant
  return variants


def _flat_variant(n_params: int) -> timing.Variant:
  """The flat Adam's ``p, m, v, count`` and gradient, ``n_params`` long."""

  def values(seed: int, scale: float) -> jax.Array:
    x = jax.random.normal(jax.random.key(seed), (n_params,), jnp.float32)
    return x * jnp.float32(scale)

  return timing.Variant(
    "flat",
    carry=(
      values(trees.PARAMS_SEED, 0.02),
      jnp.zeros((n_params,), jnp.float32),
      jnp.zeros((n_params,), jnp.float32),
      jnp.zeros((), jnp.int32),
    ),
    extra=(values(trees.GRADS_SEED, 1e-3),),
  )


def _train_variants(
  name: str, quick: bool, optimizers: Optimizers, grads: Any
) -> dict[str, timing.Variant]:
  """The training steps of adam_jax with float32 moments and each of
  ``STATE_FORMATS``: fresh parameters, state and the loss's inputs."""
  inputs = steps_lib.train_inputs(grads)
  result = {}
  for key, make in optimizers.items():
    if key == "adam_jax" or key.removeprefix("adam_jax_") in steps_lib.STATE_FORMATS:
      params = trees.build_tree(name, quick=quick)
      result[key] = timing.Variant(
        f"train_{key}", carry=(params, make().init(params)), extra=(inputs,)
      )
  return result


def _build(
  name: str, quick: bool, per_leaf: bool, state_formats: bool
) -> _TreeVariants:
  """Builds the tree's inputs for every variant and waits for them."""
  optimizers = steps_lib.optimizers(per_leaf, state_formats)
  grads = trees.build_tree(name, quick=quick, seed=trees.GRADS_SEED, scale=1e-3)
  leaves = jax.tree.leaves(grads)
  n_params = sum(int(x.size) for x in leaves)
  built = _TreeVariants(
    n_params=n_params,
    n_leaves=len(leaves),
    optimizers=optimizers,
    variants=_optimizer_variants(name, quick, optimizers, grads),
    flat=_flat_variant(n_params),
    floors=[
      timing.Variant(key, carry=(trees.build_tree(name, quick=quick),), extra=(grads,))
      for key in ("tree_floor", "call_floor")
    ],
    trains=_train_variants(name, quick, optimizers, grads) if state_formats else {},
  )
  jax.block_until_ready([(v.carry, v.extra) for v in built.timed()])
  return built


def _compile(built: _TreeVariants, compile_repeats: int, log: Log, where: str) -> None:
  """Compiles every variant; the optimizers ``compile_repeats`` times each,
  alternating, and the others once. ``where`` prefixes the messages."""
  for rep in range(compile_repeats):
    for key, make in built.optimizers.items():
      log(f"{where}: compiling {key} ({rep + 1}/{compile_repeats})")
      v = built.variants[key]
      compile_s = timing.compile_variant(v, steps_lib.make_step(make()), (0, 1))
      v.temp_bytes = timing.temp_bytes(v.compiled)
      log(f"{where}: {key} compiled in {compile_s:.2f} s")
  timing.compile_variant(built.flat, steps_lib.flat_adam_step, (0, 1, 2, 3))
  floor_steps = (steps_lib.tree_floor_step, steps_lib.call_floor_step)
  for floor, fn in zip(built.floors, floor_steps, strict=True):
    timing.compile_variant(floor, fn, (0,))
  for key, v in built.trains.items():
    log(f"{where}: compiling the training step of {key}")
    v.compiled, _, _ = timing.timed_compile(
      steps_lib.make_train_step(built.optimizers[key]()), (0, 1), v.carry + v.extra
    )
    v.temp_bytes = timing.temp_bytes(v.compiled)


def _step_record(
  v: timing.Variant, built: _TreeVariants, optax_compile: float
) -> dict[str, Any]:
  """The times of any variant, with its ratios to flat and (but flat's) optax."""
  step_median = timing.median(v.step_s)
  record: dict[str, Any] = {
    "step_median_s": step_median,
    "step_s": v.step_s,
    "gb_per_s": steps_lib.BYTES_PER_PARAM * built.n_params / step_median / 1e9,
    "ratio_to_flat": timing.median_ratio(v.step_s, built.flat.step_s),
    "lower_median_s": timing.median(v.lower_s),
    "lower_s": v.lower_s,
    "compile_median_s": timing.median(v.compile_s),
    "compile_s": v.compile_s,
  }
  if v is not built.flat:
    record["ratio_to_optax"] = timing.median_ratio(
      v.step_s, built.variants["optax"].step_s
    )
    record["compile_ratio_to_optax"] = record["compile_median_s"] / optax_compile
  return record


def _optimizer_fields(v: timing.Variant, built: _TreeVariants) -> dict[str, Any]:
  """An optimizer's state and memory, and its times against adam_jax's with
  float32 moments (also in the training step, where one was timed)."""
  assert v.state_bytes is not None
  fields: dict[str, Any] = {
    "state_bytes": v.state_bytes,
    "state_bytes_per_param": v.state_bytes / built.n_params,
    "temp_bytes": v.temp_bytes,
    "ratio_to_adam_jax": timing.median_ratio(
      v.step_s, built.variants["adam_jax"].step_s
    ),
  }
  train = built.trains.get(v.key)
  if train is not None:  # its training step, against float32 moments'
    fields["train_step_median_s"] = timing.median(train.step_s)
    fields["train_step_s"] = train.step_s
    fields["train_temp_bytes"] = train.temp_bytes
    fields["train_ratio_to_adam_jax"] = timing.median_ratio(
      train.step_s, built.trains["adam_jax"].step_s
    )
  return fields


def _records(built: _TreeVariants) -> dict[str, dict[str, Any]]:
  """The ``results`` of the tree's record, by variant key."""
  optax_compile = timing.median(built.variants["optax"].compile_s)
  records = {}
  for v in (*built.variants.values(), built.flat, *built.floors):
    records[v.key] = _step_record(v, built, optax_compile)
    if v.key in built.variants:  # an optimizer's
      records[v.key].update(_optimizer_fields(v, built))
  return records


def bench_tree(
  name: str,
  *,
  quick: bool,
  steps: int,
  compile_repeats: int,
  per_leaf: bool,
  state_formats: bool,
  log: Log,
  prefix: str,
) -> dict[str, Any]:
  """Benchmarks one tree; returns its record (an element of ``run``'s ``trees``).

  Args:
    name: one of ``trees.TREES``.
    quick: the tiny version of the tree.
    steps: timed rounds after the warm-up rounds.
    compile_repeats: compilations per optimizer.
    per_leaf: also time ``adam_jax.adam(pack_small_leaves=False)``.
    state_formats: also time adam_jax's other moment formats, in the step and
      in a training step.
    log: called with each progress message.
    prefix: starts each message, e.g. ``"[1/5]"``.
  """
  where = f"{prefix} {name}"
  log(f"{where} ({trees.tree_description(name, quick=quick)}): building trees")
  built = _build(name, quick, per_leaf, state_formats)
  log(f"{where}: {built.n_params:,} params in {built.n_leaves} leaves")
  _compile(built, compile_repeats, log, where)
  timed = built.timed()
  log(
    f"{where}: timing {timing.WARMUP_ROUNDS} warm-up + {steps} rounds of "
    f"{len(timed)} steps"
  )
  timing.time_rounds(timed, steps)
  records = _records(built)
  ours = records["adam_jax"]
  log(
    f"{where}: step adam_jax/optax {ours['ratio_to_optax']:.3f}, "
    f"compile adam_jax/optax {ours['compile_ratio_to_optax']:.2f}"
  )
  n_params, n_leaves = built.n_params, built.n_leaves
  del built, timed  # free the tree's arrays before the next tree's
  gc.collect()
  return {
    "tree": name,
    "description": trees.tree_description(name, quick=quick),
    "n_params": n_params,
    "n_leaves": n_leaves,
    "results": records,
  }
