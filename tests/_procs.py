"""Running Python in a subprocess: the demo, the benchmarks, and scripts that
need simulated devices (``XLA_FLAGS`` must be set before jax is imported)."""

import os
from pathlib import Path
import subprocess
import sys

# The repository root: the working directory of the scripts run here.
REPO = Path(__file__).resolve().parent.parent


def run_python(
  *args: str,
  devices: int | None = None,
  cwd=None,
  timeout: int = 300,
  env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
  """``python *args`` on the CPU backend, with ``devices`` simulated CPU
  devices when given and ``env`` added to the environment; returns the
  finished process (output captured)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
  if devices is not None:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return subprocess.run(
    [sys.executable, *args],
    capture_output=True,
    text=True,
    timeout=timeout,
    env=env,
    cwd=cwd,
    check=False,
  )
