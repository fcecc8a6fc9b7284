"""``run``: the whole benchmark, from the arguments to the record.

The record is ``{"header": ..., "trees": [...]}`` and, unless ``vmap=False``,
``"vmap": {...}``: the header names the device, the versions and the settings,
so that a saved record says what produced it.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
import datetime
import importlib.metadata
import os
import platform
import sys
from typing import Any

import jax
import numpy as np
import optax

import adam_jax
from adam_jax.benchmarks import steps as steps_lib
from adam_jax.benchmarks import timing
from adam_jax.benchmarks import tree_bench
from adam_jax.benchmarks import vmap_bench
from adam_jax.benchmarks.trees import parse_trees


def print_to_stderr(message: str) -> None:
  """Prints a progress message to stderr (the default ``log`` of ``run``).

  Args:
    message: the line to print.
  """
  print(message, file=sys.stderr, flush=True)


def _version(package: str) -> str | None:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def _header(
  *,
  quick: bool,
  steps: int,
  compile_repeats: int,
  per_leaf: bool,
  state_formats: bool,
  vmap: bool,
  trees: Sequence[str],
) -> dict[str, Any]:
  device = jax.devices()[0]
  config: Any = jax.config  # the option attributes are not in its type stubs
  return {
    "benchmark": "adam_jax.benchmarks",
    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "platform": device.platform,
    "device_kind": device.device_kind,
    "device_count": jax.device_count(),
    "cpu_count": os.cpu_count(),
    "python": platform.python_version(),
    "jax": jax.__version__,
    "jaxlib": _version("jaxlib"),
    "optax": optax.__version__,
    "numpy": np.__version__,
    "adam_jax": adam_jax.__version__,
    "persistent_compilation_cache": bool(
      config.jax_enable_compilation_cache and config.jax_compilation_cache_dir
    ),
    "xla_flags": os.environ.get("XLA_FLAGS"),
    # glibc's malloc settings decide whether XLA's per-step buffers are fresh
    # pages (see the low-memory guide, docs/guides/low_memory.md).
    "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
    "learning_rate": steps_lib.LEARNING_RATE,
    "bytes_per_param": steps_lib.BYTES_PER_PARAM,
    "quick": quick,
    "trees": list(trees),
    "steps": steps,
    "warmup_rounds": timing.WARMUP_ROUNDS,
    "compile_repeats": compile_repeats,
    "per_leaf": per_leaf,
    "state_formats": state_formats,
    "vmap": vmap,
  }


def _check_positive_int(name: str, value: Any) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def run(
  trees: str | Sequence[str] | None = None,
  *,
  quick: bool = False,
  steps: int | None = None,
  compile_repeats: int = 1,
  per_leaf: bool = False,
  state_formats: bool = False,
  vmap: bool = True,
  log: Callable[[str], None] = print_to_stderr,
) -> dict[str, Any]:
  """Runs the benchmark and returns its record (what ``--json`` writes).

  Calls ``jax.clear_caches()`` before every compilation. Timings mean little
  while other work runs on the same device.

  Args:
    trees: names from ``TREES`` (a sequence or a comma-separated string), in
      the order to run; ``None`` for all of them.
    quick: tiny trees and few steps (a smoke test).
    steps: timed rounds per tree after ``WARMUP_ROUNDS`` warm-up rounds;
      ``None`` for ``DEFAULT_STEPS`` (``QUICK_STEPS`` if ``quick``).
    compile_repeats: compilations per optimizer; the median is reported.
    per_leaf: also time ``adam_jax.adam(pack_small_leaves=False)``.
    state_formats: also time adam_jax with the moment storages of
      ``STATE_FORMATS``, keyed ``adam_jax_<label>`` (``adam_jax_bf16``,
      ``adam_jax_int8``, ``adam_jax_int4``, ``adam_jax_int4_factored``).
    vmap: after the trees, also time ``jax.jit(jax.vmap(step))`` over a batch
      of independent one-leaf problems against one unbatched step, in
      ``steps`` rounds as well (``vmap_bench``).
    log: called with each progress message.

  Returns:
    ``{"header": {...}, "trees": [...]}``: the device, versions and settings,
    then one record per tree with ``tree``, ``description``, ``n_params``,
    ``n_leaves`` and ``results``, which maps ``optax``, ``adam_jax``,
    ``flat`` (and ``adam_jax_per_leaf`` and the ``adam_jax_<format>`` ones)
    to their medians, raw per-round step times and compile times in seconds,
    effective GB/s and ratios; the optimizers also have ``state_bytes``,
    ``state_bytes_per_param``, ``ratio_to_adam_jax`` (step time over
    adam_jax's with float32 state, the median of per-round ratios) and
    ``temp_bytes`` (the compiled step's temporary buffer, ``None`` where the
    backend does not report it); with ``state_formats``, adam_jax's also have
    ``train_step_median_s``, ``train_step_s``, ``train_ratio_to_adam_jax``
    and ``train_temp_bytes``, the same for a training step
    (``steps.make_train_step``: the gradient of a least-squares loss,
    computed in the step). With ``vmap``, the record also has ``"vmap"``:
    ``batch``, ``leaf_size``, the unbatched step's ``single_step_median_s``
    and ``single_step_s``, and ``results``, which maps ``adam_jax``,
    ``adam_jax_bf16`` and ``optax`` to their vmapped step's ``step_median_s``,
    ``step_s``, ``compile_median_s`` and ``ratio_to_batch_x_single`` (the
    vmapped step over ``batch`` unbatched steps, the median of per-round
    ratios).

  Raises:
    ValueError: for an unknown tree name, ``steps < 1`` or
      ``compile_repeats < 1``.
  """
  names = parse_trees(trees)
  if steps is None:
    steps = timing.QUICK_STEPS if quick else timing.DEFAULT_STEPS
  _check_positive_int("steps", steps)
  _check_positive_int("compile_repeats", compile_repeats)
  header = _header(
    quick=quick,
    steps=steps,
    compile_repeats=compile_repeats,
    per_leaf=per_leaf,
    state_formats=state_formats,
    vmap=vmap,
    trees=names,
  )
  if header["persistent_compilation_cache"]:
    log(
      "warning: JAX's persistent compilation cache is on; compile times may be cache hits"
    )
  log(
    f"adam_jax.benchmarks on {header['platform']} ({header['device_kind']}), "
    f"jax {header['jax']}, optax {header['optax']}"
  )
  records = [
    tree_bench.bench_tree(
      name,
      quick=quick,
      steps=steps,
      compile_repeats=compile_repeats,
      per_leaf=per_leaf,
      state_formats=state_formats,
      log=log,
      prefix=f"[{i + 1}/{len(names)}]",
    )
    for i, name in enumerate(names)
  ]
  result: dict[str, Any] = {"header": header, "trees": records}
  if vmap:
    result["vmap"] = vmap_bench.bench_vmap(quick=quick, steps=steps, log=log)
  return result
