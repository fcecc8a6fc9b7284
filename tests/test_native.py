"""The one-pass CPU kernel for bfloat16 and 8-bit moments (``native``,
``cpu_step.cc``) against the XLA step it replaces.

The XLA step is itself tested against independent references (float64 NumPy
transcriptions, optax, PyTorch) in ``test_quantized.py``, ``test_dtypes.py``
and the parity tests, which now run through the kernel wherever it applies.
Here the kernel must give the XLA step's results bit for bit: the update and
every stored array, over several steps, for every storage pairing, block
layout and option it accepts.
"""

import contextlib
import functools
import os
import re
import shutil
import subprocess
import sys

import jax
from jax.interpreters import mlir
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from adam_jax._src import fused
from adam_jax._src import native
from adam_jax._src import transform
from tests.conftest import optax_mode

pytestmark = pytest.mark.skipif(
  sys.platform != "linux", reason="the kernel is built on Linux only"
)

BF16, F32, INT8 = jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32), "int8"
STORAGE = {
  "bf16/bf16": (BF16, BF16),
  "int8/int8": (INT8, INT8),
  "int8/bf16": (INT8, BF16),
  "f32/int8": (F32, INT8),
  "bf16/f32": (BF16, F32),
}
# Blocks along the last axis, partial blocks, blocks over trailing axes.
SHAPES = [(64, 512), (3, 1000), (5000,), (2, 3, 200), (17, 300)]


def test_kernel_is_built_here():
  """CI machines have a C++ compiler: the kernel must be in use there."""
  if shutil.which("g++") is None and shutil.which("clang++") is None:
    pytest.skip("no C++ compiler on this machine")
  assert native.available()
  assert native.enabled()


def _grads(shape, steps, seed, special=False):
  """Gradients over 8 decades, with zeros; ``special`` adds NaN, +-inf,
  float32's extremes and subnormals to the second step."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(steps):
    g = rng.standard_normal(shape) * 10.0 ** rng.uniform(-6, 2, shape)
    g[rng.random(shape) < 0.05] = 0.0
    if special and i == 1:
      flat = g.reshape(-1)
      flat[:8] = [np.nan, np.inf, -np.inf, 3e38, -3e38, 1e-40, -1e-45, 0.0]
    out.append(jnp.asarray(g, jnp.float32))
  return out


@contextlib.contextmanager
def _native(on):
  """Traces inside run with the kernel on or off (``ADAM_JAX_NATIVE``)."""
  os.environ["ADAM_JAX_NATIVE"] = "1" if on else "0"
  try:
    yield
  finally:
    os.environ.pop("ADAM_JAX_NATIVE")


def _run(make, shape, native_on, steps=4, special=False, seed=0):
  """``steps`` jitted updates from ``init``; the updates and the last state."""
  with _native(native_on):
    tx = make()
    p = jnp.asarray(np.random.default_rng(seed + 1).standard_normal(shape), jnp.float32)
    state = tx.init(p)
    update = jax.jit(tx.update)
    hlo = update.lower(jnp.zeros(shape), state, p).as_text()
    us = []
    for g in _grads(shape, steps, seed, special):
      u, state = update(g, state, p)
      us.append(u)
  return us, state, hlo


def _assert_same(make, shape, exact=True, **kw):
  """The kernel's updates and final state equal XLA's: bit for bit, or
  (``exact=False``, where XLA fuses the gradient's own computation into its
  step and so may contract a multiply-add differently) within 2 ulp of the
  largest update, one bfloat16 ulp and one 8-bit code."""
  us, state, hlo = _run(make, shape, True, **kw)
  ref_us, ref_state, ref_hlo = _run(make, shape, False, **kw)
  assert native.TARGET in hlo and native.TARGET not in ref_hlo
  for step, (a, b) in enumerate(zip(us, ref_us, strict=True)):
    msg = f"update, step {step + 1}"
    if exact:
      np.testing.assert_array_equal(a, b, err_msg=msg)
    else:
      ulp = np.spacing(np.float32(np.nanmax(np.abs(b))))
      np.testing.assert_allclose(a, b, rtol=0, atol=2 * ulp, err_msg=msg)
  leaves, ref_leaves = jax.tree.leaves(state), jax.tree.leaves(ref_state)
  assert jax.tree.structure(state) == jax.tree.structure(ref_state)
  for a, b in zip(leaves, ref_leaves, strict=True):
    assert a.dtype == b.dtype and a.shape == b.shape
    if exact:  # as bits: NaNs included (a stored NaN is the same NaN)
      np.testing.assert_array_equal(_bits(a), _bits(b))
    elif jnp.issubdtype(a.dtype, jnp.integer):
      assert np.abs(np.asarray(a, np.int32) - np.asarray(b, np.int32)).max() <= 1
    else:
      np.testing.assert_allclose(
        np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=2.0**-7
      )


def _bits(x):
  x = np.asarray(x)
  return x.view(f"u{x.dtype.itemsize}")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("storage", STORAGE, ids=str)
def test_bitwise_equal_to_xla(storage, shape):
  mu, nu = STORAGE[storage]
  small = {"int8_min_size": 256} if INT8 in (mu, nu) else {}
  _assert_same(lambda: adam_jax.adam(1e-3, mu_dtype=mu, nu_dtype=nu, **small), shape)


@pytest.mark.parametrize("storage", ["bf16/bf16", "int8/int8"])
def test_nonfinite_and_extreme_gradients(storage):
  """NaN, inf, float32's largest values and subnormals: the same NaN updates,
  the same saturated moments and the same codes (a non-finite value poisons
  only itself) as XLA."""
  mu, nu = STORAGE[storage]
  make = lambda: adam_jax.adam(1e-3, mu_dtype=mu, nu_dtype=nu)  # noqa: E731
  _assert_same(make, (8, 512), special=True)
  us, _, _ = _run(make, (8, 512), True, special=True)
  u = np.asarray(us[1]).reshape(-1)
  assert np.isnan(u[:3]).all() and np.isfinite(u[3:]).all()


OPTIONS = {
  "adamw": lambda mu, nu: adam_jax.adamw(1e-3, mu_dtype=mu, nu_dtype=nu),
  "no_bias_correction": lambda mu, nu: adam_jax.scale_by_adam(
    mu_dtype=mu, nu_dtype=nu, bias_correction=False
  ),
  "eps_traced_zero": lambda mu, nu: optax.inject_hyperparams(
    adam_jax.adam, static_args=("int8_min_size",)
  )(learning_rate=1e-3, eps=0.0, mu_dtype=mu, nu_dtype=nu),
  "eps_root": lambda mu, nu: adam_jax.adam(
    1e-3, eps_root=1e-6, mu_dtype=mu, nu_dtype=nu
  ),
  "schedule": lambda mu, nu: adam_jax.adam(
    lambda t: 1e-3 / (1 + t.astype(jnp.float32)),
    b1=0.8,
    b2=0.99,
    mu_dtype=mu,
    nu_dtype=nu,
  ),
  "inject_hyperparams": lambda mu, nu: optax.inject_hyperparams(
    adam_jax.adam, static_args=("int8_min_size",)
  )(learning_rate=1e-3, b1=0.85, b2=0.995, eps=1e-7, mu_dtype=mu, nu_dtype=nu),
  "multisteps": lambda mu, nu: optax.MultiSteps(
    adam_jax.adam(1e-3, mu_dtype=mu, nu_dtype=nu), every_k_schedule=2
  ),
}


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("storage", ["bf16/bf16", "int8/int8"])
def test_options_bitwise_equal_to_xla(option, storage):
  mu, nu = STORAGE[storage]
  # optax's MultiSteps is not written for strict dtype promotion; it hands
  # the update an average that XLA computes inside its own step.
  multisteps = option == "multisteps"
  with optax_mode() if multisteps else contextlib.nullcontext():
    _assert_same(lambda: OPTIONS[option](mu, nu), (4, 1024), exact=not multisteps)


@pytest.mark.parametrize(
  "make",
  [
    lambda: adam_jax.adam(1e-3, mu_dtype=BF16, nu_dtype=BF16, amsgrad=True),
    lambda: adam_jax.adam(1e-3, mu_dtype=BF16, nu_dtype=BF16, nesterov=True),
    lambda: adam_jax.adam(1e-3, mu_dtype=INT8, nu_dtype=INT8, skip_nonfinite=True),
    lambda: adam_jax.adam(1e-3, mu_dtype=BF16, nu_dtype=BF16, maximize=True),
    lambda: adam_jax.adam(1e-3, eps=0.0, mu_dtype=BF16, nu_dtype=BF16),
    lambda: adam_jax.adam(1e-3),
  ],
  ids=["amsgrad", "nesterov", "skip_nonfinite", "maximize", "eps_0", "float32"],
)
def test_other_configurations_stay_in_xla(make):
  _, _, hlo = _run(make, (4, 1024), True, steps=1)
  assert native.TARGET not in hlo


def test_every_code_byte_decodes_as_xla():
  """The kernel decodes whole 8-bit blocks through a table of every code
  byte (byte permutes): every byte, those ``quantize`` never writes (-128)
  included, must decode as XLA's ``dequantize`` does. A zero gradient keeps
  the decoded moments in the step (m = b1 m, v = b2 v, the update from both),
  compared bit for bit; a partial block (the computed decode) rides along."""

  def make():
    return adam_jax.adam(1e-3, mu_dtype=INT8, nu_dtype=INT8, int8_min_size=256)

  shape = (6, 300)  # two blocks a row: a whole one and a partial one
  p = jnp.ones(shape)
  state = make().init(p)
  rng = np.random.default_rng(3)
  every = np.stack([rng.permutation(256) for _ in range(shape[0])])  # (6, 256)
  rest = rng.integers(0, 256, (shape[0], shape[1] - 256))
  codes = np.concatenate([every, rest], axis=1).astype(np.uint8)
  decades = 10.0 ** rng.integers(-20, 20, (shape[0], 2))
  scales = (rng.uniform(0.5, 2.0, (shape[0], 2)) * decades).astype(np.float32)
  mu = type(state[0].mu)(jnp.asarray(codes.view(np.int8)), jnp.asarray(scales))
  nu = type(state[0].nu)(jnp.asarray(codes[::-1]), jnp.asarray(scales[::-1]))
  state = (state[0]._replace(count=jnp.int32(5), mu=mu, nu=nu), *state[1:])
  g = jnp.zeros(shape)
  out = {}
  for on in (True, False):
    with _native(on):
      update = jax.jit(make().update)  # a new function: traced afresh
      assert (native.TARGET in update.lower(g, state, p).as_text()) == on
      out[on] = update(g, state, p)
  for a, b in zip(jax.tree.leaves(out[True]), jax.tree.leaves(out[False]), strict=True):
    np.testing.assert_array_equal(_bits(a), _bits(b))


def test_decade_of_every_float_as_xla_defines_it(tmp_path):
  """The kernel's encoder finds a value's decade from its binary exponent (a
  table an octave) where XLA's (``moments._indices``) compares it with each
  bound 10^-i and scales it by one product: a C++ driver checks the kernel's
  code index against a transcription of ``_indices`` for every float32 in
  [0, 1], both code maps (``tests/fixtures/decade_check.cc``; about 10 s)."""
  cxx = native._compiler()
  if cxx is None:
    pytest.skip("no C++ compiler on this machine")
  driver = os.path.join(os.path.dirname(__file__), "fixtures", "decade_check.cc")
  exe = tmp_path / "decade_check"
  flags = [f for f in native._FLAGS if f not in ("-shared", "-fPIC")]
  cmd = [cxx, *flags, f"-I{jax.ffi.include_dir()}", f'-DSOURCE="{native._SOURCE}"']
  subprocess.run([*cmd, driver, "-o", str(exe)], check=True, capture_output=True)
  done = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stdout + done.stderr
  assert done.stdout.split() == ["top6", "0", "top7", "0"], done.stdout


def test_state_is_updated_in_place():
  """With the state donated, the compiled step copies none of it (XLA's own
  step must copy a narrower-stored state to recompute from it), nor the
  gradient (the update is a buffer of its own)."""
  tx = adam_jax.adam(1e-3, mu_dtype=INT8, nu_dtype=BF16)
  p = jnp.ones((512, 512))

  def step(p, state, g):
    u, state = tx.update(g, state, p)
    return optax.apply_updates(p, u), state

  hlo = jax.jit(step, donate_argnums=(0, 1)).lower(p, tx.init(p), p).compile().as_text()
  entry = hlo[hlo.index("ENTRY") :]
  copies = [line for line in entry.splitlines() if " copy(" in line]
  assert not copies, copies
  assert native.TARGET in entry


def _aliases(hlo):
  """The kernel call's ``(output, operand)`` index pairs that share a buffer."""
  line = next(x for x in hlo.splitlines() if native.TARGET in x and "custom-call(" in x)
  aliasing = re.search(
    r"output_to_operand_aliasing=\{((?:\{\d+\}: \(\d+, \{\}\),? ?)*)\}", line
  )
  assert aliasing, line
  return [tuple(map(int, m)) for m in re.findall(r"\{(\d+)\}: \((\d+),", aliasing[1])]


@pytest.mark.parametrize("storage", ["bf16/bf16", "int8/bf16"])
def test_update_is_written_over_a_computed_gradient(storage):
  """A gradient the step computes (a temporary) takes its update in place; a
  gradient that is the step's argument, or a reshape of it, does not (XLA
  would copy it first). Either way the results are XLA's bit for bit,
  including when the gradient is used after the update."""
  mu, nu = STORAGE[storage]
  tx = adam_jax.adam(1e-3, mu_dtype=mu, nu_dtype=nu)
  grads = _grads((16, 512), 2, 6)
  params = jnp.ones((16, 512))
  state = tx.init(params)

  def computed(p, s, g):
    u, s = tx.update(g * 2.0, s, p)
    return optax.apply_updates(p, u), s

  def computed_and_kept(p, s, g):
    g = g * 2.0
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s, g

  def argument(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  def reshaped(p, s, g):
    u, s = tx.update(g.reshape(8, 2, 512).reshape(16, 512), s, p)
    return optax.apply_updates(p, u), s

  for fn, over_gradient in (
    (computed, True),
    (computed_and_kept, True),
    (argument, False),
    (reshaped, False),
  ):
    results = []
    for native_on in (True, False):
      with _native(native_on):
        jitted = jax.jit(fn)
        compiled = jitted.lower(params, state, grads[0]).compile()
        if native_on:
          hlo = compiled.as_text()
          # outputs: m, m scales, v, v scales, then the update (index 4);
          # operands: coef, the same four, then the gradient (index 5).
          assert ((4, 5) in _aliases(hlo)) == over_gradient, fn.__name__
        out = compiled(params, state, grads[0])
        results.append(jitted(*out[:2], grads[1]))
    got, want = (jax.tree.leaves(r) for r in results)
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
      np.testing.assert_array_equal(_bits(a), _bits(b))


def test_jvp_and_vmap():
  """Derivatives come from the XLA step (the kernel has none), including
  through a traced hyperparameter; vmap runs the kernel per example."""
  g = _grads((4, 512), 1, 3)[0]

  def update(b1, g, native_on):
    with _native(native_on):
      tx = optax.inject_hyperparams(adam_jax.adam)(
        learning_rate=1e-3, b1=b1, mu_dtype=INT8, nu_dtype=BF16
      )
      state = tx.init(g)
      state = tx.update(g, state)[1]
      return tx.update(g * 0.5, state)[0]

  got, want = (
    jax.jvp(functools.partial(update, native_on=on), (0.9, g), (1.0, g))
    for on in (True, False)
  )
  # The same XLA math, compiled inside jvp in other fusions: FMA contraction
  # may round elements differently, and the tangent's terms cancel.
  for a, b in zip(got, want, strict=True):
    scale = np.abs(np.asarray(b)).max()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * scale)
  assert np.abs(np.asarray(got[1])).max() > 0  # d/db1 and d/dg are not zero

  batch = jnp.stack(_grads((3, 4, 1024), 1, 4)[0])  # 4096 per example: 8-bit
  tx = adam_jax.adam(1e-3, mu_dtype=INT8, nu_dtype=INT8)
  # The state is an input (a zero state made inside the step would be folded
  # into XLA's arithmetic, and round differently).
  state = jax.vmap(tx.init)(batch)
  results = []
  for native_on in (True, False):
    with _native(native_on):
      batched = jax.jit(jax.vmap(lambda g, s: tx.update(g, s)[0]))
      assert (native.TARGET in batched.lower(batch, state).as_text()) == native_on
      results.append(batched(batch, state))
  np.testing.assert_array_equal(*results)


def test_other_platforms_lower_the_xla_step():
  """The kernel is only the CPU's lowering of the step: exported from here
  for CUDA or TPU the step has no custom call, and the XLA step lowered for
  them (run here in place of the kernel) gives XLA's results bit for bit."""
  tx = adam_jax.adam(1e-3, mu_dtype=INT8, nu_dtype=BF16)
  grads = _grads((8, 512), 2, 5)
  state = tx.init(grads[0])
  state = jax.jit(tx.update)(grads[0], state)[1]  # nonzero moments
  update = jax.jit(lambda g, s: tx.update(g, s))
  check = [jax.export.DisabledSafetyCheck.custom_call(native.TARGET)]
  for platforms in [("cpu",), ("cuda",), ("tpu",), ("cpu", "cuda")]:
    exported = jax.export.export(update, platforms=platforms, disabled_checks=check)
    text = exported(grads[1], state).mlir_module()
    assert (native.TARGET in text) == ("cpu" in platforms), platforms

  def run(rule):
    jax.clear_caches()
    mlir.register_lowering(native.step_p, rule, platform="cpu")
    try:
      lowered = jax.jit(lambda g, s: tx.update(g, s)).lower(grads[1], state)
      assert (native.TARGET in lowered.as_text()) == (rule is native._lower_kernel)
      return lowered.compile()(grads[1], state)
    finally:
      mlir.register_lowering(native.step_p, native._lower_kernel, platform="cpu")
      jax.clear_caches()

  with _native(False):
    want = jax.jit(lambda g, s: tx.update(g, s))(grads[1], state)
  for got in (run(native._lower_xla), run(native._lower_kernel)):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
      np.testing.assert_array_equal(_bits(a), _bits(b))


def test_build_failure_falls_back_to_xla(monkeypatch, tmp_path):
  """Without a working compiler the kernel is reported unavailable once, with
  a warning naming the cause, and the step runs in XLA."""
  monkeypatch.setattr(native, "_state", {})
  monkeypatch.setenv("ADAM_JAX_CACHE", str(tmp_path))
  monkeypatch.setenv("CXX", "false")
  with pytest.warns(RuntimeWarning, match="kernel is unavailable"):
    assert not native.available()
  assert not native.enabled()  # reported once: no second warning
  _, _, hlo = _run(
    lambda: adam_jax.adam(1e-3, mu_dtype=BF16, nu_dtype=BF16), (8, 256), True, steps=1
  )
  assert native.TARGET not in hlo


def test_build_is_cached(monkeypatch, tmp_path):
  """One build per source, compiler, jaxlib and machine: a second build
  returns the same file without compiling."""
  monkeypatch.setenv("ADAM_JAX_CACHE", str(tmp_path))
  first = native._build()
  stamp = first.stat().st_mtime_ns
  assert native._build() == first and first.stat().st_mtime_ns == stamp
  assert [p.name for p in tmp_path.iterdir()] == [first.name]


# Packed chunks (many small leaves): the kernel steps a chunk's gradient
# leaves where they are, in place of XLA's concatenation, chunk step and
# slices. Sizes leave partial 256-value blocks, and 8-bit chunks' gaps (their
# leaves start at whole blocks); with int8_min_size=256 the leaves of 300 or
# more values get 8-bit moments and the others float32 ones (other chunks).
PACKED = [(4, 16), (300,), (7, 9, 5), (1000,), (3,)] * 14


def _run_tree(make, native_on, shapes, steps=3):
  """``_run`` on a tree of leaves of these shapes."""
  rng = np.random.default_rng(5)
  params = {
    f"p{i:02d}": jnp.asarray(rng.standard_normal(s), jnp.float32)
    for i, s in enumerate(shapes)
  }
  grads = [
    {k: g for k, g in zip(params, gs, strict=True)}
    for gs in zip(*(_grads(s, steps, i) for i, s in enumerate(shapes)), strict=True)
  ]
  with _native(native_on):
    tx = make()
    state = tx.init(params)
    update = jax.jit(tx.update)
    hlo = update.lower(params, state, params).as_text()
    us = []
    for g in grads:
      u, state = update(g, state, params)
      us.append(u)
  return us, state, hlo


def _run_packed(make, native_on, steps=3):
  """``_run`` on a tree of ``PACKED`` leaves."""
  us, state, hlo = _run_tree(make, native_on, PACKED, steps)
  assert any(
    fused.is_packed(x) for x in jax.tree.leaves(state, is_leaf=fused.is_packed)
  )
  return us, state, hlo


def _assert_same_tree(got, want):
  """Updates and every stored array equal, as bits."""
  (us, state, _), (ref_us, ref_state, _) = got, want
  for a, b in zip(jax.tree.leaves(us), jax.tree.leaves(ref_us), strict=True):
    np.testing.assert_array_equal(_bits(a), _bits(b))
  assert jax.tree.structure(state) == jax.tree.structure(ref_state)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state), strict=True):
    np.testing.assert_array_equal(_bits(a), _bits(b))


PACKED_CASES = {
  "f32": lambda: adam_jax.adam(1e-3),
  "bf16": lambda: adam_jax.adam(1e-3, mu_dtype=BF16, nu_dtype=BF16),
  "int8": lambda: adam_jax.adam(1e-3, mu_dtype=INT8, nu_dtype=INT8, int8_min_size=256),
  "int8/bf16": lambda: adam_jax.adam(
    1e-3, mu_dtype=INT8, nu_dtype=BF16, int8_min_size=256
  ),
  "adamw": lambda: adam_jax.adamw(1e-3, weight_decay=0.1),
  "inject_hyperparams": lambda: optax.inject_hyperparams(
    adam_jax.adam, static_args=("int8_min_size",)
  )(learning_rate=1e-3, b1=0.85, b2=0.995, mu_dtype=INT8, int8_min_size=256),
}


@pytest.mark.parametrize("case", PACKED_CASES)
def test_packed_chunks_bitwise_equal_to_xla(case):
  """Updates and every stored array (chunks, codes, scales), as bits, equal
  XLA's concatenate-step-slice over 3 steps; the compiled step has no
  concatenation of gradients left."""
  got = _run_packed(PACKED_CASES[case], True)
  want = _run_packed(PACKED_CASES[case], False)
  assert native.TARGET in got[2] and native.TARGET not in want[2]
  assert "concatenate" in want[2]
  _assert_same_tree(got, want)


# Leaves with moments of their own: too few small ones to pack, then a packed
# tree's large leaves (2**16 elements or more) beside its chunks (3 chunks of
# its 70 small leaves).
OWN_TREES = {"own": [*SHAPES, (100,)], "packed": [*PACKED, (300, 256), (70000,)]}


@pytest.mark.parametrize("tree", OWN_TREES)
@pytest.mark.parametrize("storage", ["bf16/bf16", "int8/bf16", "f32/int8"])
def test_own_leaves_share_kernel_calls(storage, tree, monkeypatch):
  """Leaves with moments of their own that the kernel takes share its calls,
  up to ``NATIVE_GROUP_ELEMENTS`` a call (a call per leaf costs more), bit
  for bit as XLA over 3 steps; leaves whose moments are both float32 (under
  ``int8_min_size``) stay in XLA."""
  mu, nu = STORAGE[storage]
  make = lambda: adam_jax.adam(1e-3, mu_dtype=mu, nu_dtype=nu)  # noqa: E731
  shapes = OWN_TREES[tree]
  got = _run_tree(make, True, shapes)
  want = _run_tree(make, False, shapes)
  chunks = 3 if tree == "packed" else 0
  assert got[2].count(f"@{native.TARGET}(") == chunks + 1
  assert native.TARGET not in want[2]
  _assert_same_tree(got, want)
  # Two calls when the own leaves hold more than the limit together.
  monkeypatch.setattr(transform, "NATIVE_GROUP_ELEMENTS", 40000)
  split = _run_tree(make, True, shapes)
  assert split[2].count(f"@{native.TARGET}(") == chunks + 2
  _assert_same_tree(split, want)


def test_alike_calls_share_the_traced_xla_step(monkeypatch):
  """Kernel calls alike in one update (chunks of the same members, groups of
  own leaves of the same shapes) trace the XLA step once; that step, lowered
  in place of the kernel, gives XLA's results bit for bit."""
  shapes = [(1000,)] * 96 + [(300, 256)] * 3  # 3 chunks alike; 3 own leaves
  monkeypatch.setattr(transform, "NATIVE_GROUP_ELEMENTS", 80000)  # one a group
  make = lambda: adam_jax.adam(1e-3, mu_dtype=BF16, nu_dtype=BF16)  # noqa: E731
  traced = []
  make_jaxpr = jax.make_jaxpr
  monkeypatch.setattr(jax, "make_jaxpr", lambda f: traced.append(f) or make_jaxpr(f))
  got = _run_tree(make, True, shapes, steps=2)
  assert got[2].count(f"@{native.TARGET}(") == 6
  assert len(traced) == 2  # one chunk, one own leaf
  want = _run_tree(make, False, shapes, steps=2)
  _assert_same_tree(got, want)
  mlir.register_lowering(native.step_p, native._lower_xla, platform="cpu")
  try:
    jax.clear_caches()
    lowered = _run_tree(make, True, shapes, steps=2)
  finally:
    mlir.register_lowering(native.step_p, native._lower_kernel, platform="cpu")
    jax.clear_caches()
  assert native.TARGET not in lowered[2]
  _assert_same_tree(lowered, want)


def test_packed_chunks_with_coupled_decay_stay_in_xla():
  """A chunk whose members decay (coupled, L2) is stepped by XLA."""
  make = lambda: adam_jax.adam(1e-3, weight_decay=0.1)  # noqa: E731
  _, _, hlo = _run_packed(make, True, steps=1)
  assert native.TARGET not in hlo


def test_packed_chunks_jvp():
  """Derivatives through a packed chunk's step are the XLA step's."""
  _, state, _ = _run_packed(PACKED_CASES["int8"], True, steps=1)
  params = {f"p{i:02d}": jnp.ones(s) for i, s in enumerate(PACKED)}
  tangent = jax.tree.map(lambda x: 0.5 * x, params)
  results = []
  for on in (True, False):
    with _native(on):
      tx = PACKED_CASES["int8"]()
      update = functools.partial(lambda tx, g: tx.update(g, state)[0], tx)
      results.append(jax.jvp(update, (params,), (tangent,)))
  # As in test_jvp_and_vmap: the same math in other fusions, and the
  # tangent's terms cancel (|u| is near 1 at every element here: its
  # derivative is small), so the scale is the tree's largest value.
  for got, want in zip(*results, strict=True):
    scale = max(np.abs(np.asarray(x)).max() for x in jax.tree.leaves(want))
    assert scale > 0
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * scale)
