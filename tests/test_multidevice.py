"""Runs tests/multidevice (8 simulated CPU devices) in its own process:
``XLA_FLAGS`` must be set before jax is imported, so those tests cannot
share this process."""

import os
from pathlib import Path
import re
import subprocess
import sys

from tests.conftest import MULTIDEVICE

REPO = Path(__file__).resolve().parent.parent


def test_multidevice_suite_passes_on_8_devices():
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS="--xla_force_host_platform_device_count=8",
    **{MULTIDEVICE: "1"},
  )
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "pytest",
      "tests/multidevice",
      "-q",
      "-p",
      "no:cacheprovider",
    ],
    capture_output=True,
    text=True,
    timeout=1200,
    env=env,
    cwd=REPO,
    check=False,
  )
  tail = out.stdout[-6000:] + out.stderr[-2000:]
  assert out.returncode == 0, tail
  summary = out.stdout.strip().splitlines()[-1]
  passed = re.search(r"(\d+) passed", summary)
  assert passed and int(passed.group(1)) >= 30, tail
  assert not re.search(r"skipped|failed|error|deselected", summary), summary
