"""Command line: ``python -m adam_jax.benchmarks [options]``.

Progress goes to stderr, the table to stdout; ``--json PATH`` also writes the
whole record (header and per-tree results with every per-round time). Nothing
is written unless asked. JAX's persistent compilation cache is turned off so
compile times are real compilations.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import json
from pathlib import Path
import sys
import time

import jax

from adam_jax import benchmarks


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(
      f"expected an integer >= 1, got {text!r}"
    ) from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
  return value


def _tree_names(text: str) -> list[str]:
  try:
    return benchmarks.parse_trees(text)
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
  """Returns the argument parser of ``python -m adam_jax.benchmarks``."""
  parser = argparse.ArgumentParser(
    prog="python -m adam_jax.benchmarks",
    description=(
      "Step and compile time of adam_jax.adam against optax.adam on five "
      "parameter trees, with a flat one-pass Adam as the floor."
    ),
  )
  parser.add_argument(
    "--quick",
    action="store_true",
    help=f"tiny trees (same leaf counts), {benchmarks.QUICK_STEPS} timed rounds: a smoke test",
  )
  parser.add_argument(
    "--json",
    type=Path,
    metavar="PATH",
    help="also write the full record as JSON to PATH",
  )
  parser.add_argument(
    "--trees",
    type=_tree_names,
    metavar="NAME,...",
    help=f"comma-separated trees to run (default: all): {', '.join(benchmarks.TREES)}",
  )
  parser.add_argument(
    "--steps",
    type=_positive_int,
    metavar="N",
    help=(
      f"timed rounds per tree after {benchmarks.WARMUP_ROUNDS} warm-up rounds "
      f"(default {benchmarks.DEFAULT_STEPS}, {benchmarks.QUICK_STEPS} with --quick)"
    ),
  )
  parser.add_argument(
    "--compile-repeats",
    type=_positive_int,
    default=1,
    metavar="K",
    help="compilations per optimizer, the median reported (default 1)",
  )
  parser.add_argument(
    "--per-leaf",
    action="store_true",
    help="also time adam_jax.adam(pack_small_leaves=False), the unpacked layout",
  )
  parser.add_argument(
    "--state-formats",
    action="store_true",
    help="also time adam_jax.adam with bfloat16, int8, int4 and int4 + factored"
    " moments",
  )
  parser.add_argument(
    "--no-vmap",
    dest="vmap",
    action="store_false",
    help=(
      "skip the vmapped update (jax.jit(jax.vmap(step)) over a batch of "
      "independent one-leaf problems, against one unbatched step)"
    ),
  )
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the benchmark from the command line.

  Args:
    argv: the arguments (default ``sys.argv[1:]``).

  Returns:
    The exit status, 0 on success (bad arguments exit via argparse).
  """
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.json is not None and not args.json.parent.is_dir():
    parser.error(f"--json: no directory {str(args.json.parent)!r}")
  # A fresh process has not consulted the persistent cache yet, so this holds.
  jax.config.update("jax_enable_compilation_cache", False)
  start = time.perf_counter()
  result = benchmarks.run(
    args.trees,
    quick=args.quick,
    steps=args.steps,
    compile_repeats=args.compile_repeats,
    per_leaf=args.per_leaf,
    state_formats=args.state_formats,
    vmap=args.vmap,
  )
  elapsed = time.perf_counter() - start
  result["header"]["wall_s"] = elapsed
  if args.json is not None:
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    benchmarks.print_to_stderr(f"wrote {args.json}")
  benchmarks.print_to_stderr(f"done in {elapsed:.1f} s")
  sys.stdout.write(benchmarks.format_table(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
