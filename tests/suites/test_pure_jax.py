"""One pure-JAX code path: importing adam_jax and stepping it starts no process
and needs no compiler.

Runs in a fresh interpreter (``subprocess.Popen`` and ``os.system`` patched to
raise before adam_jax is imported), once with the machine's PATH and once with
an empty PATH and no ``CXX``/``CC``.
"""

import pytest

from tests._procs import REPO
from tests._procs import run_python

pytestmark = pytest.mark.slow


IMPORT_AND_STEP = """
import os, subprocess

def refuse(*args, **kwargs):
  raise AssertionError(f"adam_jax started a subprocess: {args!r}")

subprocess.Popen.__init__ = refuse
os.system = refuse
import jax.numpy as jnp
import adam_jax

params = {"w": jnp.ones((64, 256)), **{f"b{i:02d}": jnp.ones(3) for i in range(70)}}
for tx in (adam_jax.adam(), adam_jax.adam(mu_dtype="int8", nu_dtype=jnp.bfloat16)):
  updates, _ = tx.update(params, tx.init(params), params)
  assert bool(jnp.all(jnp.isfinite(updates["w"])))
print("ok")
"""


def test_import_and_step_need_no_compiler_and_start_no_process(tmp_path):
  # With the machine's PATH (a compiler there must not be started), and with
  # no compiler at all: an empty PATH and no CXX.
  no_compiler = {"PATH": str(tmp_path), "CXX": "", "CC": ""}
  for env in ({}, no_compiler):
    out = run_python("-c", IMPORT_AND_STEP, env=env, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
