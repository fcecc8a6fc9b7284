"""``format_table``: a ``run`` record as text, one table row per tree.

The main table compares adam_jax with optax and the floors on each tree; the
optional tables follow it: the moment formats (``state_formats``) and the
vmapped update (where the record has ``"vmap"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adam_jax.benchmarks.steps import STATE_FORMATS
from adam_jax.benchmarks.steps import TRAIN_BATCH

TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
  ("", "tree"),
  ("", "params"),
  ("", "leaves"),
  ("compile s", "optax"),
  ("compile s", "adam_jax"),
  ("compile s", "ratio"),
  ("step ms", "optax"),
  ("step ms", "adam_jax"),
  ("step ms", "ratio"),
  ("step ms", "flat"),
  ("step / flat", "optax"),
  ("step / flat", "adam_jax"),
  ("GB/s", "optax"),
  ("GB/s", "adam_jax"),
  ("GB/s", "flat"),
  ("state B/param", "optax"),
  ("state B/param", "adam_jax"),
  ("floor / optax", "step"),
  ("floor / optax", "compile"),
  ("floor / optax", "call"),
)
"""The ``(group, name)`` columns of ``format_table`` (two more with per-leaf)."""

_PER_LEAF_COLUMNS = (("per-leaf", "compile s"), ("per-leaf", "step ratio"))

STATE_FORMAT_COLUMNS: tuple[tuple[str, str], ...] = (
  ("", "tree"),
  ("", "moments"),
  ("", "state B/param"),
  ("", "compile s"),
  ("", "step ms"),
  ("", "step / float32"),
  ("", "temp MiB"),
  ("training step", "ms"),
  ("training step", "/ float32"),
  ("training step", "temp MiB"),
)
"""The columns of the ``--state-formats`` table."""


def _fmt_ms(seconds: float) -> str:
  ms = seconds * 1e3
  if ms >= 100:
    return f"{ms:.1f}"
  if ms >= 1:
    return f"{ms:.2f}"
  return f"{ms:.4f}"


def _fmt_gbps(gbps: float) -> str:
  return f"{gbps:.1f}" if gbps >= 10 else f"{gbps:.2f}" if gbps >= 1 else f"{gbps:.3f}"


def _fmt_s(seconds: float) -> str:
  return f"{seconds:.2f}" if seconds >= 0.1 else f"{seconds:.3f}"


def _fmt_mib(nbytes: int | None) -> str:
  return "-" if nbytes is None else f"{nbytes / 2**20:.1f}"


def _render_table(
  columns: Sequence[tuple[str, str]], rows: list[list[str]]
) -> list[str]:
  """Right-aligned columns (the first left-aligned) under two header rows.

  A group name spans its run of adjacent columns, centered over them.
  """
  widths = [
    max(len(name), *(len(r[i]) for r in rows)) for i, (_, name) in enumerate(columns)
  ]
  sep = "  "
  groups: list[tuple[str, int]] = []  # (group, number of columns)
  for group, _ in columns:
    if groups and groups[-1][0] == group:
      groups[-1] = (group, groups[-1][1] + 1)
    else:
      groups.append((group, 1))
  top, i = [], 0
  for group, n in groups:
    span = sum(widths[i : i + n]) + len(sep) * (n - 1)
    if len(group) > span:  # widen the group's last column to fit its name
      widths[i + n - 1] += len(group) - span
      span = len(group)
    top.append(group.center(span) if group else " " * span)
    i += n

  def line(cells: Sequence[str]) -> str:
    first = cells[0].ljust(widths[0])
    rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
    return sep.join([first, *rest]).rstrip()

  return [
    sep.join(top).rstrip(),
    line([name for _, name in columns]),
    line(["-" * w for w in widths]),
    *(line(r) for r in rows),
  ]


def _header_lines(h: dict[str, Any]) -> list[str]:
  """The run's date, device, versions, environment and settings."""
  environment = ", ".join(
    f"{name}={h[key]}"
    for key, name in (("xla_flags", "XLA_FLAGS"), ("glibc_tunables", "GLIBC_TUNABLES"))
    if h.get(key)
  )
  return [
    f"adam_jax.benchmarks  {h['date']}",
    f"device: {h['platform']} ({h['device_kind']}), {h['device_count']} device(s), "
    f"{h['cpu_count']} CPUs",
    f"python {h['python']}, jax {h['jax']}, jaxlib {h['jaxlib']}, optax {h['optax']}, "
    f"adam_jax {h['adam_jax']}",
    "environment: " + (environment or "no XLA_FLAGS or GLIBC_TUNABLES"),
    f"{'quick (tiny trees), ' if h['quick'] else ''}{h['warmup_rounds']} warm-up + "
    f"{h['steps']} timed rounds, median of {h['compile_repeats']} compile(s) per "
    f"optimizer, lr {h['learning_rate']}",
    "",
  ]


def _tree_row(t: dict[str, Any], per_leaf: bool) -> list[str]:
  """One tree's cells of the main table, in ``TABLE_COLUMNS`` order."""
  r = t["results"]
  o, a, f = r["optax"], r["adam_jax"], r["flat"]
  row = [
    t["tree"],
    f"{t['n_params']:,}",
    str(t["n_leaves"]),
    _fmt_s(o["compile_median_s"]),
    _fmt_s(a["compile_median_s"]),
    f"{a['compile_ratio_to_optax']:.2f}",
    _fmt_ms(o["step_median_s"]),
    _fmt_ms(a["step_median_s"]),
    f"{a['ratio_to_optax']:.3f}",
    _fmt_ms(f["step_median_s"]),
    f"{o['ratio_to_flat']:.2f}",
    f"{a['ratio_to_flat']:.2f}",
    _fmt_gbps(o["gb_per_s"]),
    _fmt_gbps(a["gb_per_s"]),
    _fmt_gbps(f["gb_per_s"]),
    f"{o['state_bytes_per_param']:.4f}",
    f"{a['state_bytes_per_param']:.4f}",
    f"{r['tree_floor']['ratio_to_optax']:.3f}",
    f"{r['tree_floor']['compile_ratio_to_optax']:.2f}",
    f"{r['call_floor']['ratio_to_optax']:.3f}",
  ]
  if per_leaf:
    p = r["adam_jax_per_leaf"]
    row += [_fmt_s(p["compile_median_s"]), f"{p['ratio_to_optax']:.3f}"]
  return row


def _main_notes(h: dict[str, Any]) -> list[str]:
  """What the main table's columns mean."""
  notes = [
    "",
    "compile: lower + compile of the jitted step. step ms: medians; ratio: "
    "adam_jax/optax, the median of per-round ratios; flat: the same Adam as one "
    "pass over flat arrays.",
    f"GB/s: {h['bytes_per_param']} bytes x params / median step. state B/param: "
    "bytes of the optimizer state's arrays / params.",
    "floor / optax: a step doing only p - lr * g on the same tree (no optimizer"
    " state), over optax's step: no optimizer on this tree can go below it. call:"
    " a step that returns the parameters unchanged (only the jitted call taking"
    " and returning the tree), over optax's step.",
  ]
  if h["per_leaf"]:
    notes.append(
      "per-leaf: adam_jax.adam(pack_small_leaves=False); its step ratio is to optax."
    )
  return notes


def _state_format_table(result: dict[str, Any]) -> list[str]:
  rows = []
  for t in result["trees"]:
    for label in ("float32", *STATE_FORMATS):
      key = "adam_jax" if label == "float32" else f"adam_jax_{label}"
      r = t["results"][key]
      rows.append(
        [
          t["tree"],
          label,
          f"{r['state_bytes_per_param']:.3f}",
          _fmt_s(r["compile_median_s"]),
          _fmt_ms(r["step_median_s"]),
          f"{r['ratio_to_adam_jax']:.2f}",
          _fmt_mib(r.get("temp_bytes")),
          _fmt_ms(r["train_step_median_s"]),
          f"{r['train_ratio_to_adam_jax']:.2f}",
          _fmt_mib(r.get("train_temp_bytes")),
        ]
      )
  return [
    "optimizer state formats: adam_jax.adam with (mu_dtype, nu_dtype) of the format"
    " (int4_factored: int4 m, factored v)",
    *_render_table(STATE_FORMAT_COLUMNS, rows),
    "step / float32: the median of per-round ratios to adam_jax with float32 moments"
    " (interleaved in the same rounds). int8, int4 and factored apply to tensors of"
    " at least 4096 elements (factored: of two or more axes); smaller ones keep"
    " float32 moments.",
    f"training step: the gradient of a least-squares loss computed in the jitted"
    f" step (a linear layer over each matrix's first axis, batch {TRAIN_BATCH};"
    " vectors scale their input), then the update and apply_updates: the"
    " gradient is produced in the step, as in training, not an input it must keep.",
    "temp MiB: the compiled step's temporary buffer, which XLA:CPU allocates on"
    " every call; glibc maps one over 32 MiB fresh from the OS each time (its pages"
    " zeroed on first write), unless told to keep freed memory (docs: low-memory guide).",
  ]


def _vmap_table(v: dict[str, Any]) -> list[str]:
  """The vmapped update's table, from the record's ``"vmap"`` entry."""
  batch = v["batch"]
  columns = (
    ("", "optimizer"),
    ("vmapped step", "ms"),
    ("vmapped step", f"/ ({batch} x single)"),
  )
  rows = [
    [key, _fmt_ms(r["step_median_s"]), f"{r['ratio_to_batch_x_single']:.3f}"]
    for key, r in v["results"].items()
  ]
  return [
    f"vmapped update: jax.jit(jax.vmap(step)) over {batch} independent problems,"
    f" each one float32 leaf of {v['leaf_size']} elements with its own state",
    *_render_table(columns, rows),
    f"single: one unbatched adam_jax.adam step on one problem,"
    f" {_fmt_ms(v['single_step_median_s'])} ms (median), timed in the same rounds.",
    f"/ ({batch} x single): the median of per-round ratios of the vmapped step to"
    f" {batch} single steps; at most about 1 when stepping the problems together"
    " costs no more than stepping them one at a time. adam_jax_bf16:"
    " mu_dtype = nu_dtype = bfloat16.",
  ]


def format_table(result: dict[str, Any]) -> str:
  """Renders a ``run`` result: a header of device and versions, then the table.

  Args:
    result: what ``run`` returned (or the JSON it wrote, loaded back).

  Returns:
    The text, one row per tree, ending in a newline. Ratios are medians of
    per-round ratios; the step ``ratio`` is adam_jax/optax (below 1: adam_jax
    is faster). The ``--state-formats`` table follows where the run had it,
    and the vmapped update's comes last where the record has ``"vmap"``.
  """
  h = result["header"]
  per_leaf = bool(h["per_leaf"])
  columns = TABLE_COLUMNS + (_PER_LEAF_COLUMNS if per_leaf else ())
  rows = [_tree_row(t, per_leaf) for t in result["trees"]]
  lines = _header_lines(h) + _render_table(columns, rows) + _main_notes(h)
  if h.get("state_formats"):
    lines += ["", *_state_format_table(result)]
  if h["quick"]:
    lines.append(
      "trees: "
      + "; ".join(f"{t['tree']} = {t['description']}" for t in result["trees"])
    )
  if "vmap" in result:
    lines += ["", *_vmap_table(result["vmap"])]
  return "\n".join(lines) + "\n"
