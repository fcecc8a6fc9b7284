"""Tests of the ``python -m adam_jax`` demo (``adam_jax/__main__.py``)."""

import math
import os
import subprocess
import sys

import pytest

from adam_jax import __main__ as demo


def _run_module(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", "adam_jax", *args],
    capture_output=True,
    text=True,
    timeout=120,
    env=env,
    check=False,
  )


def test_train_learns_digits():
  lines = []
  result = demo.train(
    epochs=5, learning_rate=3e-3, batch_size=64, seed=0, log=lines.append
  )
  chance = math.log(10)
  assert result["test_accuracy"] >= 0.90
  assert result["initial_train_loss"] > 0.5 * chance
  assert result["train_loss"] < 0.25 * chance
  assert result["train_loss"] < result["initial_train_loss"]
  assert result["steps"] == 5 * (1347 // 64)
  # One header line, one line per epoch, one final line.
  assert len(lines) == 1 + 5 + 1
  assert lines[-1].startswith("final test accuracy: ")
  assert "adam_jax.adam" in lines[-1]


def test_module_runs():
  proc = _run_module("--epochs", "2")
  assert proc.returncode == 0, proc.stderr
  assert "Traceback" not in proc.stderr
  last = proc.stdout.strip().splitlines()[-1]
  assert last.startswith("final test accuracy: ")
  assert "adam_jax.adam" in last
  assert "epoch 2/2" in proc.stdout


@pytest.mark.parametrize(
  ("args", "option"),
  [
    (["--epochs", "0"], "--epochs"),
    (["--learning-rate", "-1"], "--learning-rate"),
    (["--learning-rate", "nan"], "--learning-rate"),
    (["--learning-rate", "inf"], "--learning-rate"),
    (["--batch-size", "abc"], "--batch-size"),
    (["--batch-size", "0"], "--batch-size"),
    (["--seed", "-1"], "--seed"),
  ],
)
def test_bad_arguments_exit_2(args, option, capsys):
  with pytest.raises(SystemExit) as excinfo:
    demo.main(args)
  assert excinfo.value.code == 2
  err = capsys.readouterr().err
  assert "error:" in err
  assert option in err


@pytest.mark.parametrize(
  ("args", "option"),
  [
    (["--epochs", "0"], "--epochs"),
    (["--learning-rate", "-1"], "--learning-rate"),
    (["--learning-rate", "nan"], "--learning-rate"),
    (["--batch-size", "abc"], "--batch-size"),
  ],
)
def test_bad_arguments_subprocess(args, option):
  proc = _run_module(*args)
  assert proc.returncode == 2
  assert "error:" in proc.stderr
  assert option in proc.stderr
  assert "Traceback" not in proc.stderr
  assert proc.stdout == ""


def test_help():
  proc = _run_module("--help")
  assert proc.returncode == 0
  for option in ("--epochs", "--learning-rate", "--batch-size", "--seed"):
    assert option in proc.stdout
