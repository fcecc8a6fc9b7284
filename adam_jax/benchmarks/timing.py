"""Compiling and timing: the pieces every measurement of the benchmark shares.

A ``Variant`` is one timed function with the arrays it runs on. ``compile_variant``
compiles it after ``jax.clear_caches()`` (so each compilation is a real one)
and records the time; ``time_rounds`` calls the compiled variants in turn,
round after round, alternating the order so that none always goes first, and
records each call's time after the warm-up rounds. Results are medians, and
ratios are medians of per-round ratios: two variants timed in the same round
see the same machine state, so their ratio is steadier than either time.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
import dataclasses
import statistics
import time
from typing import Any

import jax
import numpy as np

DEFAULT_STEPS = 30
QUICK_STEPS = 5
WARMUP_ROUNDS = 3


@dataclasses.dataclass
class Variant:
  """One timed function: its compiled executable and the carried inputs.

  Attributes:
    key: the name of its record.
    compiled: the compiled executable, called as ``compiled(*carry, *extra)``.
    carry: the donated arguments; each call's outputs replace them (a single
      output replaces a one-element ``carry``).
    extra: the arguments every call reuses (not donated).
    lower_s: the trace-and-lower time of each compilation, in seconds.
    compile_s: the lower-and-compile time of each compilation, in seconds.
    step_s: the time of each timed call, in seconds, one per round.
    state_bytes: the optimizer state's bytes, for an optimizer's step.
    temp_bytes: the compiled function's temporary buffer, where known.
  """

  key: str
  compiled: Any = None
  carry: tuple[Any, ...] = ()
  extra: tuple[Any, ...] = ()
  lower_s: list[float] = dataclasses.field(default_factory=list)
  compile_s: list[float] = dataclasses.field(default_factory=list)
  step_s: list[float] = dataclasses.field(default_factory=list)
  state_bytes: int | None = None
  temp_bytes: int | None = None


def state_bytes(state: Any) -> int:
  """The bytes of the arrays in an optimizer state."""
  return sum(
    int(x.nbytes)
    for x in jax.tree.leaves(state)
    if isinstance(x, jax.Array | np.ndarray)
  )


def timed_compile(
  fn: Callable[..., Any], donate: tuple[int, ...], args: Sequence[Any]
) -> tuple[Any, float, float]:
  """Compiles ``jax.jit(fn, donate_argnums=donate)`` for ``args`` from scratch.

  Returns:
    ``(compiled, lower_s, compile_s)``: the executable, the trace-and-lower
    time and the whole lower-and-compile time, in seconds.
  """
  jax.clear_caches()
  jitted = jax.jit(fn, donate_argnums=donate)
  t0 = time.perf_counter()
  lowered = jitted.lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  return compiled, t1 - t0, t2 - t0


def temp_bytes(compiled: Any) -> int | None:
  """The compiled step's temporary buffer, in bytes (``None`` where the
  backend does not say). XLA:CPU allocates it afresh on every call."""
  try:
    analysis = compiled.memory_analysis()
  except Exception:  # not every backend implements it
    return None
  size = getattr(analysis, "temp_size_in_bytes", None)
  return None if size is None else int(size)


def compile_variant(
  v: Variant, fn: Callable[..., Any], donate: tuple[int, ...]
) -> float:
  """Compiles ``fn`` for ``v``'s arguments into ``v.compiled``; records the
  lower and compile times in ``v`` and returns the compile time in seconds."""
  v.compiled, lower_s, compile_s = timed_compile(fn, donate, v.carry + v.extra)
  v.lower_s.append(lower_s)
  v.compile_s.append(compile_s)
  return compile_s


def time_rounds(timed: Sequence[Variant], steps: int) -> None:
  """Calls every variant once per round, ``WARMUP_ROUNDS + steps`` rounds.

  Even rounds go in the order given, odd ones in reverse. Each call is waited
  for with ``jax.block_until_ready`` and its outputs become the next call's
  ``carry``; the calls of the last ``steps`` rounds are appended to each
  variant's ``step_s``.
  """
  for r in range(WARMUP_ROUNDS + steps):
    for v in timed if r % 2 == 0 else reversed(timed):
      t0 = time.perf_counter()
      out = v.compiled(*v.carry, *v.extra)
      jax.block_until_ready(out)
      elapsed = time.perf_counter() - t0
      v.carry = (out,) if len(v.carry) == 1 else tuple(out)  # a floor: params
      if r >= WARMUP_ROUNDS:
        v.step_s.append(elapsed)


def median(xs: Iterable[float]) -> float:
  """The median, as a Python float."""
  return float(statistics.median(xs))


def median_ratio(xs: Sequence[float], ys: Sequence[float]) -> float:
  """The median over rounds of ``x / y``, for times taken in the same rounds."""
  return median(a / b for a, b in zip(xs, ys, strict=True))
