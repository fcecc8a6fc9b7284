"""The 2-process data-parallel example (``jax.distributed`` over localhost,
CPU collectives through gloo) against the same training in one process."""

import re

import pytest

from tests._procs import REPO
from tests._procs import run_python

pytestmark = pytest.mark.slow


def test_two_processes_train_like_one():
  out = run_python("-m", "adam_jax.examples.multihost", "--steps", "60", cwd=REPO)
  text = out.stdout + out.stderr
  assert out.returncode == 0, text[-4000:]
  assert "process 1/2: 2 local of 4 devices" in text
  assert "processes agree to 0.0e+00" in out.stdout
  losses = [float(x) for x in re.findall(r"loss (\d+\.\d+)\n", out.stdout)]
  assert losses[0] > 2 and losses[-1] < 0.5, losses
  # ZeRO-1 over 4 devices: each holds a quarter of m and v (8 bytes per
  # parameter), except the output bias's (10 values: 4 does not divide them,
  # so they stay whole), plus the replicated int32 count.
  per_device = re.search(r"state on its first device (\d+) B", out.stdout)
  assert per_device and int(per_device.group(1)) == 8 * (9600 // 4 + 10) + 4
  assert out.stdout.rstrip().endswith("OK")
