"""Regenerates the stored PyTorch/Keras reference trajectories.

    pip install -e ".[parity]"      # torch==2.13.0 (CPU) and keras 3
    python tests/make_parity_fixtures.py

writes ``tests/fixtures/parity/sequence.npz`` (the initial parameters and the
gradient sequence) and one ``<case>.npz`` per case in ``tests/_parity.py``
(every parameter after every step, plus Keras's ``use_ema`` average where the
case has one). ``tests/suites/test_parity.py`` compares adam_jax with these files
always, and with the live frameworks whenever they are installed.
"""

from __future__ import annotations

from pathlib import Path
import sys

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import _parity


def main() -> None:
  _parity.FIXTURES.mkdir(parents=True, exist_ok=True)
  params0, grads = _parity.make_sequence()
  np.savez_compressed(
    _parity.FIXTURES / "sequence.npz",
    **{f"params0/{k}": v for k, v in params0.items()},
    **{f"grads/{k}": v for k, v in grads.items()},
  )
  for case in _parity.CASES:
    ref = _parity.RUNNERS[case.framework](case, params0, grads)
    version = _parity.framework_version(case.framework)
    np.savez_compressed(
      _parity.FIXTURES / f"{case.name}.npz", version=np.str_(version), **ref
    )
    ours = _parity.run_ours(case.ours(), params0, grads)
    worst = max(
      _parity.max_elementwise_relative_difference(ours[k], ref[k]) for k in ref
    )
    print(f"{case.name:40s} {version:14s} adam_jax max rel diff {worst:.2e}")


if __name__ == "__main__":
  main()
