"""Tests of ``adam_jax.benchmarks`` and ``python -m adam_jax.benchmarks``."""

import json
import math
import statistics
import subprocess

import jax
import numpy as np
import pytest

from adam_jax import benchmarks
from tests._procs import REPO
from tests._procs import run_python

QUICK_LEAVES = {
  "1x16M": 1,
  "transformer": 65,
  "400x4096": 40,
  "2000x1024": 200,
  "resnet50": 161,
}
TORCHVISION_RESNET50_PARAMS = 25_557_032


def _run_module(*args: str) -> subprocess.CompletedProcess:
  return run_python("-m", "adam_jax.benchmarks", *args, cwd=REPO)


def _shapes(name: str, quick: bool) -> list[jax.ShapeDtypeStruct]:
  tree = jax.eval_shape(lambda: benchmarks.build_tree(name, quick=quick))
  return jax.tree.leaves(tree)


def _num_params(leaves) -> int:
  return sum(math.prod(x.shape) for x in leaves)


# Session scope: the tests that use it share an xdist group (one worker), and
# a module fixture would be set up again after another module's test ran there.
@pytest.fixture(scope="session")
def quick_run(tmp_path_factory):
  """One ``--quick`` run of every tree: (completed process, JSON record)."""
  path = tmp_path_factory.mktemp("bench") / "b.json"
  proc = _run_module("--quick", "--json", str(path))
  assert proc.returncode == 0, proc.stderr
  return proc, json.loads(path.read_text())


@pytest.mark.slow
@pytest.mark.xdist_group("benchmarks")
def test_quick_run_prints_the_table(quick_run):
  proc, result = quick_run
  names = [name for _, name in benchmarks.TABLE_COLUMNS]
  header = [line.split() for line in proc.stdout.splitlines()]
  assert names == next(w for w in header if w[:1] == ["tree"])
  # The table on stdout is the JSON record's, so the JSON carries all of it.
  assert benchmarks.format_table(result) in proc.stdout
  assert "[5/5] resnet50" in proc.stderr  # progress goes to stderr
  assert "environment: " in proc.stdout


@pytest.mark.slow
@pytest.mark.xdist_group("benchmarks")
def test_quick_run_records_every_tree(quick_run):
  _, result = quick_run
  header = result["header"]
  assert header["quick"] is True
  assert header["steps"] == benchmarks.QUICK_STEPS
  assert header["platform"] == jax.devices()[0].platform
  assert [t["tree"] for t in result["trees"]] == list(benchmarks.TREES)
  for t in result["trees"]:
    name, n = t["tree"], t["n_params"]
    leaves = _shapes(name, quick=True)
    assert t["n_leaves"] == len(leaves) == QUICK_LEAVES[name]
    assert n == _num_params(leaves)
    results = t["results"]
    for key in ("optax", "adam_jax", "flat", "tree_floor", "call_floor"):
      r = results[key]
      assert len(r["step_s"]) == benchmarks.QUICK_STEPS
      assert all(math.isfinite(s) and s > 0 for s in r["step_s"]), (name, key)
      assert math.isfinite(r["step_median_s"]) and r["step_median_s"] > 0
      assert r["compile_median_s"] > 0
      assert 0 < r["lower_median_s"] <= r["compile_median_s"]
      assert r["gb_per_s"] == pytest.approx(28 * n / r["step_median_s"] / 1e9)
    for key in ("optax", "adam_jax", "tree_floor", "call_floor"):
      assert math.isfinite(results[key]["ratio_to_optax"])
    # optax: float32 mu and nu, 8 bytes per parameter, plus the int32 count.
    assert results["optax"]["state_bytes"] == 8 * n + 4
    assert results["optax"]["state_bytes_per_param"] == pytest.approx(8.0, abs=0.01)
    # adam_jax: the same moments and a few scalar counters.
    assert 8.0 <= results["adam_jax"]["state_bytes_per_param"] <= 8.01
    assert "adam_jax_per_leaf" not in results  # only with --per-leaf


@pytest.mark.slow
@pytest.mark.xdist_group("benchmarks")
def test_quick_run_times_the_vmapped_update(quick_run):
  """The vmapped update is on by default: 8 problems of one 256-element leaf
  with --quick, each variant's ratio to 8 unbatched steps of the same rounds."""
  proc, result = quick_run
  assert result["header"]["vmap"] is True
  v = result["vmap"]
  batch = v["batch"]
  assert (batch, v["leaf_size"]) == (8, 256)
  single_s = v["single_step_s"]
  assert len(single_s) == benchmarks.QUICK_STEPS
  assert all(math.isfinite(s) and s > 0 for s in single_s)
  assert v["single_step_median_s"] == statistics.median(single_s)
  assert list(v["results"]) == ["adam_jax", "adam_jax_bf16", "optax"]
  for key, r in v["results"].items():
    assert len(r["step_s"]) == benchmarks.QUICK_STEPS
    assert math.isfinite(r["step_median_s"]) and r["step_median_s"] > 0, key
    ratio = r["ratio_to_batch_x_single"]
    assert math.isfinite(ratio) and ratio > 0, key
    per_round = [a / (batch * b) for a, b in zip(r["step_s"], single_s, strict=True)]
    assert ratio == pytest.approx(statistics.median(per_round))
  table = proc.stdout[proc.stdout.index("vmapped update") :]
  assert "/ (8 x single)" in table
  for key, r in v["results"].items():
    assert f"{r['ratio_to_batch_x_single']:.3f}" in table
    assert any(line.split()[:1] == [key] for line in table.splitlines()), key
  # Without the entry (--no-vmap), the table leaves it out.
  without = {k: x for k, x in result.items() if k != "vmap"}
  assert "vmapped update" not in benchmarks.format_table(without)


@pytest.mark.slow
def test_per_leaf_column(tmp_path):
  path = tmp_path / "b.json"
  proc = _run_module(
    "--quick",
    "--per-leaf",
    "--no-vmap",
    "--trees",
    "400x4096",
    "--steps",
    "1",
    "--json",
    str(path),
  )
  assert proc.returncode == 0, proc.stderr
  result = json.loads(path.read_text())
  (record,) = result["trees"]
  assert len(record["results"]["optax"]["step_s"]) == 1
  assert result["header"]["per_leaf"] is True
  per_leaf = record["results"]["adam_jax_per_leaf"]
  assert per_leaf["compile_median_s"] > 0
  assert math.isfinite(per_leaf["ratio_to_optax"])
  assert "per-leaf" in proc.stdout
  assert result["header"]["vmap"] is False  # --no-vmap
  assert "vmap" not in result
  assert "vmapped update" not in proc.stdout


@pytest.mark.slow
def test_state_formats_table(tmp_path):
  """--state-formats times bf16, int8, int4 and int4 + factored moments
  against float32 ones and reports the state's bytes, counted here from the
  formats' definitions."""
  path = tmp_path / "b.json"
  proc = _run_module(
    "--quick",
    "--state-formats",
    "--no-vmap",
    "--trees",
    "1x16M",
    "--steps",
    "2",
    "--json",
    str(path),
  )
  assert proc.returncode == 0, proc.stderr
  result = json.loads(path.read_text())
  assert result["header"]["state_formats"] is True
  (record,) = result["trees"]
  n = record["n_params"]  # one leaf of 4096: at the int8 threshold, so 8-bit
  assert n == 4096
  results = record["results"]
  count = 4  # the int32 step count
  expected = {
    "adam_jax": 2 * 4 * n + count,
    "adam_jax_bf16": 2 * 2 * n + count,
    "adam_jax_int8": 2 * (n + 4 * (n // 256)) + count,  # codes + float32 scales
    # Two codes a byte; m's scale per 128 values, v's (one axis: blocks too).
    "adam_jax_int4": 2 * (n // 2 + 4 * (n // 128)) + count,
    # A vector is not factored: v stays float32.
    "adam_jax_int4_factored": n // 2 + 4 * (n // 128) + 4 * n + count,
  }
  for key, nbytes in expected.items():
    assert results[key]["state_bytes"] == nbytes, key
    assert len(results[key]["step_s"]) == 2
    assert math.isfinite(results[key]["ratio_to_adam_jax"]), key
    assert len(results[key]["train_step_s"]) == 2
    assert math.isfinite(results[key]["train_ratio_to_adam_jax"]), key
  assert results["adam_jax"]["ratio_to_adam_jax"] == 1.0
  assert results["adam_jax"]["train_ratio_to_adam_jax"] == 1.0
  # XLA fuses float32 moments' update into apply_updates: no update buffer.
  assert results["adam_jax"]["temp_bytes"] < 4 * n
  for key in expected:
    assert results[key]["train_temp_bytes"] >= 0, key
  assert "train_step_s" not in results["optax"]
  assert "optimizer state formats" in proc.stdout
  assert benchmarks.format_table(result) in proc.stdout


def test_full_size_trees():
  by_name = {name: _shapes(name, quick=False) for name in benchmarks.TREES}
  for leaves in by_name.values():
    assert {x.dtype for x in leaves} == {np.dtype(np.float32)}
  assert [x.shape for x in by_name["1x16M"]] == [(2**24,)]
  assert len(by_name["transformer"]) == 65
  assert (32000, 512) in [x.shape for x in by_name["transformer"]]
  assert [x.shape for x in by_name["400x4096"]] == [(4096,)] * 400
  assert [x.shape for x in by_name["2000x1024"]] == [(1024,)] * 2000
  resnet = by_name["resnet50"]
  assert len(resnet) == 161
  assert _num_params(resnet) == TORCHVISION_RESNET50_PARAMS
  assert (7, 7, 3, 64) in [x.shape for x in resnet]
  assert (2048, 1000) in [x.shape for x in resnet]


def test_trees_are_deterministic():
  for name in benchmarks.TREES:
    a = benchmarks.build_tree(name, quick=True)
    b = benchmarks.build_tree(name, quick=True)
    grads = benchmarks.build_tree(name, quick=True, seed=1)
    assert jax.tree.structure(a) == jax.tree.structure(grads)
    # Compared in NumPy: one device-to-host copy a leaf, no op to compile.
    leaves = zip(
      *(map(np.asarray, jax.tree.leaves(t)) for t in (a, b, grads)), strict=True
    )
    for x, y, g in leaves:
      np.testing.assert_array_equal(x, y)
      assert not np.array_equal(x, g)


@pytest.mark.slow
def test_bad_trees_exit_nonzero_naming_the_allowed_ones():
  proc = _run_module("--trees", "nope")
  assert proc.returncode != 0
  assert "nope" in proc.stderr
  for name in benchmarks.TREES:
    assert name in proc.stderr
  assert proc.stdout == ""


@pytest.mark.slow
def test_bad_steps_exit_nonzero():
  proc = _run_module("--steps", "0")
  assert proc.returncode != 0
  assert "--steps" in proc.stderr


def test_run_validates_its_arguments():
  with pytest.raises(ValueError, match="1x16M, transformer, 400x4096"):
    benchmarks.run(["1x16M", "nope"])
  with pytest.raises(ValueError, match="steps"):
    benchmarks.run(quick=True, steps=0)
  with pytest.raises(ValueError, match="compile_repeats"):
    benchmarks.run(quick=True, compile_repeats=0)
  assert benchmarks.parse_trees("resnet50, 1x16M,resnet50") == ["resnet50", "1x16M"]
