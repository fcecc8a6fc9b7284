"""Tests that need 8 devices. ``tests/suites/test_multidevice.py`` runs them in their
own process with ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (set
before jax is imported); the main test run does not collect them (see
``tests/conftest.py``)."""

import jax

if jax.device_count() != 8:
  raise RuntimeError(
    f"tests/suites/multidevice needs 8 devices, found {jax.device_count()}: run it"
    " through tests/suites/test_multidevice.py, or set"
    " XLA_FLAGS=--xla_force_host_platform_device_count=8 before starting pytest."
  )
