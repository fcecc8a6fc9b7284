"""Regenerates the stored reference trajectories.

    pip install -e ".[parity]"      # torch==2.13.0 (CPU), keras 3, and the
                                    # PyTorch optimizer packages
    python tests/make_parity_fixtures.py [CASE ...]

writes ``tests/fixtures/parity/sequence.npz`` (the initial parameters and the
gradient sequence) and one ``<case>.npz`` per case in ``tests/_parity.py``
(every parameter after every step, plus Keras's ``use_ema`` average or
schedule-free's evaluation parameters where the case has them); with CASE
names, only those cases (and ``sequence.npz`` only if it is missing).
``tests/suites/test_parity.py`` compares adam_jax with these files always,
and with the live frameworks whenever they are installed.

The references need only the frameworks; the adam_jax comparison printed
after each is skipped (with the reason) where adam_jax cannot build the
case's configuration.
"""

from __future__ import annotations

from pathlib import Path
import sys

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import _parity


def main(names: list[str]) -> None:
  known = {case.name for case in _parity.CASES}
  unknown = sorted(set(names) - known)
  if unknown:
    raise SystemExit(f"unknown cases: {', '.join(unknown)}")
  _parity.FIXTURES.mkdir(parents=True, exist_ok=True)
  params0, grads = _parity.make_sequence()
  sequence = _parity.FIXTURES / "sequence.npz"
  if not names or not sequence.exists():
    np.savez_compressed(
      sequence,
      **{f"params0/{k}": v for k, v in params0.items()},
      **{f"grads/{k}": v for k, v in grads.items()},
    )
  for case in _parity.CASES:
    if names and case.name not in names:
      continue
    ref = _parity.RUNNERS[case.framework](case, params0, grads)
    version = _parity.framework_version(case.framework)
    np.savez_compressed(
      _parity.FIXTURES / f"{case.name}.npz", version=np.str_(version), **ref
    )
    try:
      ours = _parity.run_case_ours(case, params0, grads)
    except (AttributeError, TypeError) as e:  # adam_jax lacks the option
      print(f"{case.name:40s} {version:44s} adam_jax: {type(e).__name__}: {e}")
      continue
    worst = max(
      _parity.max_elementwise_relative_difference(ours[k], ref[k]) for k in ref
    )
    print(f"{case.name:40s} {version:44s} adam_jax max rel diff {worst:.2e}")


if __name__ == "__main__":
  main(sys.argv[1:])
