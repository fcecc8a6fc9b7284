"""Runs tests/suites/multidevice (8 simulated CPU devices) in its own process:
``XLA_FLAGS`` must be set before jax is imported, so those tests cannot
share this process."""

import re

import pytest

from tests._procs import REPO
from tests._procs import run_python
from tests.conftest import MULTIDEVICE

pytestmark = pytest.mark.slow


def test_multidevice_suite_passes_on_8_devices():
  out = run_python(
    # One process (-n 0): the outer run's workers already use every core.
    *("-m", "pytest", "tests/suites/multidevice", "-q", "-p", "no:cacheprovider"),
    *("-n", "0"),
    devices=8,
    cwd=REPO,
    timeout=1200,
    env={MULTIDEVICE: "1"},
  )
  tail = out.stdout[-6000:] + out.stderr[-2000:]
  assert out.returncode == 0, tail
  summary = out.stdout.strip().splitlines()[-1]
  passed = re.search(r"(\d+) passed", summary)
  assert passed and int(passed.group(1)) >= 30, tail
  assert not re.search(r"skipped|failed|error|deselected", summary), summary
