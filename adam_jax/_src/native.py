"""The one-pass CPU step for low-precision moments (``cpu_step.cc``).

XLA:CPU compiles an Adam step into one loop per output. When a moment is
stored narrower than it is computed (bfloat16, 8-bit), every loop recomputes
the moments from the old state, so with the state donated XLA copies the old
state first (and decodes 8-bit moments three times). ``cpu_step.cc`` does the
step of one leaf in a single pass over blocks of 256 values, as an XLA FFI
custom call on the CPU. It also steps the members of a packed chunk (any
moment storage, float32 included) from the gradient leaves themselves, where
XLA concatenates them, steps the chunk and slices the update.

The kernel is compiled on first use with the system's C++ compiler against
the installed jaxlib's FFI headers, into a per-user cache
(``$ADAM_JAX_CACHE``, else ``~/.cache/adam_jax``); without a compiler, or with
``ADAM_JAX_NATIVE=0``, every step stays in XLA (the same math; see
:func:`available` and :func:`enabled`).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
from typing import Any
import warnings

import jax
from jax.extend import core as jex_core
from jax.interpreters import ad
from jax.interpreters import batching
from jax.interpreters import mlir
import jax.numpy as jnp
import numpy as np

TARGET = "adam_jax_cpu_step"
_SOURCE = pathlib.Path(__file__).with_name("cpu_step.cc")
_FLAGS = [
  "-O3",
  "-march=native",
  "-fno-math-errno",
  "-fno-trapping-math",
  # No implicit FMAs (GCC contracts by default, clang within expressions):
  # cpu_step.cc writes one exactly where XLA contracts, so that its results
  # are XLA's with any compiler.
  "-ffp-contract=off",
  "-std=c++17",
  "-shared",
  "-fPIC",
  "-w",
]
_lock = threading.Lock()
_state: dict[str, Any] = {}


def _cache_dir() -> pathlib.Path:
  root = os.environ.get("ADAM_JAX_CACHE")
  if root:
    return pathlib.Path(root)
  return (
    pathlib.Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "adam_jax"
  )


def _compiler() -> str | None:
  return os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")


def _build() -> pathlib.Path:
  """Compiles the kernel (once per source, compiler, jaxlib and machine)."""
  cxx = _compiler()
  if cxx is None:
    raise RuntimeError("no C++ compiler (set CXX, or install g++ or clang++)")
  include = jax.ffi.include_dir()
  version = subprocess.run(
    [cxx, "--version"], capture_output=True, text=True, check=True
  ).stdout
  key = hashlib.sha256()
  for part in (_SOURCE.read_bytes(), version.encode(), jax.__version__.encode()):
    key.update(part)
  key.update(" ".join(_FLAGS).encode() + _cpu_flags().encode() + include.encode())
  out = _cache_dir() / f"cpu_step-{key.hexdigest()[:16]}.so"
  if out.exists():
    return out
  out.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
    built = pathlib.Path(tmp) / out.name
    cmd = [cxx, *_FLAGS, f"-I{include}", str(_SOURCE), "-o", str(built)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
      raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    os.replace(built, out)  # atomic: concurrent builds leave one whole file
  return out


def _cpu_flags() -> str:
  """The CPU's feature flags (``-march=native`` depends on them)."""
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("flags"):
        return line
  except OSError:
    pass
  import platform

  return platform.processor() + platform.machine()


def available() -> bool:
  """Whether the one-pass CPU kernel is compiled and registered with XLA.

  The first call builds it (a few seconds, once per machine); a failure is
  reported once as a warning and the step stays in XLA.
  """
  if "ok" in _state:
    return _state["ok"]
  with _lock:
    if "ok" in _state:
      return _state["ok"]
    ok = False
    if sys.platform == "linux":
      try:
        lib = ctypes.CDLL(str(_build()))
        capsule = jax.ffi.pycapsule(lib.AdamJaxCpuStep)
        jax.ffi.register_ffi_target(TARGET, capsule, platform="cpu")
        _state["lib"] = lib
        ok = True
      except Exception as e:
        warnings.warn(
          f"adam_jax: the one-pass CPU kernel is unavailable ({e}); low-precision"
          " moments are stepped by XLA instead (same results, slower).",
          RuntimeWarning,
          stacklevel=3,
        )
    _state["ok"] = ok
    return ok


def enabled() -> bool:
  """Whether the kernel may be used: ``ADAM_JAX_NATIVE`` (read at trace
  time) is not ``0`` and the kernel is :func:`available`."""
  return os.environ.get("ADAM_JAX_NATIVE", "1") != "0" and available()


# Operations whose result XLA makes a view of their operand's buffer.
_SAME_BUFFER = ("reshape", "squeeze", "expand_dims")


def _computed(x) -> bool:
  """Whether gradient ``x`` is computed by the function being traced (a
  temporary, free once the step has read it) rather than one of its arguments
  or constants (seen through reshapes).

  An update written over an argument's buffer would make XLA copy that
  argument first, unless donated: a pass over fresh memory, where a new
  update buffer is written once. (Measured on this work's 2-core CPU,
  bfloat16 moments: writing over the gradient took the update step from 1.28x
  to 1.86x float32 moments' time on 1x16M, where the gradient is the step's
  argument; the training step, where it is a temporary, from 2.15x to 1.60x,
  and the transformer's from 1.15x to 1.04x.) Reads JAX's tracing internals
  (a traced value's ``parent`` equation); where they differ, says no.
  """
  while True:
    eqn = getattr(x, "parent", None)
    if eqn is None:
      return False
    name = getattr(getattr(eqn, "primitive", None), "name", None)
    ins: tuple[Any, ...] = tuple(getattr(eqn, "in_tracers", ()))
    if name not in _SAME_BUFFER:
      return name is not None
    if len(ins) != 1:
      return False
    x = ins[0]


def step(xla_fn, kernel_fn, g, stored, coef, jaxprs=None, key=None):
  """``kernel_fn(g, stored, coef, free)`` when lowered for the CPU, else
  ``xla_fn(g, stored)`` (the same step); derivatives are ``xla_fn``'s. Both
  return ``(updates, *stored)``: float32 updates shaped as the gradient
  leaves ``g``, and the new state shaped as ``stored``.

  One primitive, :data:`step_p`, whose CPU lowering is the kernel. The XLA
  step is traced once, here, into a jaxpr whose constants (the values it
  closes over: the step count, traced hyperparameters and their tangents)
  become operands; it is lowered only for other platforms and differentiated
  only under ``jvp``. (A ``platform_dependent`` in a ``custom_jvp`` traced
  it twice a call, and the 2000x1024 benchmark step took 1.5 s to lower
  instead of 1.0-1.15 s.)

  ``free`` tells, per gradient leaf, whether the traced function computes it
  (:func:`_computed`): the kernel may then write its update over it.

  ``jaxprs``, a dict, keeps the traced XLA step under ``key`` and the shapes
  of ``(g, stored)``, for calls in the same trace whose ``xla_fn`` is the
  same function of its arguments (the caller's promise, which ``key``
  carries) and closes over the same values.
  """
  flat, tree = jax.tree.flatten((g, stored))
  key = (key, tree, tuple((x.shape, x.dtype) for x in flat))
  if jaxprs is not None and key in jaxprs:
    closed = jaxprs[key]
  else:
    closed = jax.make_jaxpr(xla_fn)(g, stored)
    if jaxprs is not None:
      jaxprs[key] = closed
  args, in_tree = jax.tree.flatten((g, stored, coef, closed.consts))
  like = ([jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in g], *stored)
  out_avals, out_tree = jax.tree.flatten(like)

  free = tuple(_computed(x) for x in g)

  def kernel(*args):
    g, stored, coef, _ = in_tree.unflatten(args)
    return out_tree.flatten_up_to(kernel_fn(g, stored, coef, free))

  def xla(*args):
    g, stored, _, consts = in_tree.unflatten(args)
    run = jex_core.jaxpr_as_fun(jex_core.ClosedJaxpr(closed.jaxpr, consts))
    return run(*jax.tree.leaves((g, stored)))

  outs = step_p.bind(
    *args,
    kernel=kernel,
    xla=xla,
    out_avals=tuple(jax.core.ShapedArray(x.shape, x.dtype) for x in out_avals),
  )
  return out_tree.unflatten(outs)


step_p = jex_core.Primitive("adam_jax_step")
step_p.multiple_results = True
step_p.def_abstract_eval(lambda *args, out_avals, **_: out_avals)
step_p.def_impl(
  lambda *args, **params: jax.jit(functools.partial(step_p.bind, **params))(*args)
)


def _lower_xla(ctx, *args, xla, **_):
  return mlir.lower_fun(xla, multiple_results=True)(ctx, *args)


def _lower_kernel(ctx, *args, kernel, **_):
  return mlir.lower_fun(kernel, multiple_results=True)(ctx, *args)


mlir.register_lowering(step_p, _lower_xla)
mlir.register_lowering(step_p, _lower_kernel, platform="cpu")


def _step_jvp(primals, tangents, *, xla, **_):
  tangents = tuple(ad.instantiate_zeros(t) for t in tangents)
  return jax.jvp(xla, primals, tangents)


ad.primitive_jvps[step_p] = _step_jvp


def _step_batch(args, dims, **params):
  """One kernel call per example (as ``ffi_call``'s sequential vmap)."""
  mapped = [d is not None for d in dims]  # None: not batched
  batched = [
    jnp.moveaxis(x, d, 0) for x, d, m in zip(args, dims, mapped, strict=True) if m
  ]

  def one(xs):
    it = iter(xs)
    return step_p.bind(
      *(next(it) if m else x for x, m in zip(args, mapped, strict=True)), **params
    )

  outs = jax.lax.map(one, batched)
  return outs, [0] * len(outs)


batching.primitive_batchers[step_p] = _step_batch


def call(grads, states, coef, layout, free=None):
  """The custom call: ``(*states, *updates)``, the states in place.

  ``grads`` are float32 gradient leaves; ``states`` are ``(m, m_scales, v,
  v_scales)`` tuples (``m_scales``, ``v_scales`` empty for a moment stored as
  floats); ``layout`` holds, per leaf, its ``(state, offset, rows, rest)``:
  the index of its state in ``states`` and where it lies in it (a leaf with
  state of its own: ``(k, 0, rows, rest)``, its blocks along ``rest``; the
  members of a packed chunk: ``(k, offset, 1, size)``). One call steps any
  number of leaves and states (see ``transform.NATIVE_GROUP_ELEMENTS``).

  An update is written over its gradient where ``free`` (a bool per leaf;
  default none) says the gradient is a temporary of the traced function
  (``_computed``), else into a new buffer, for which the kernel asks for huge
  pages: XLA would copy a gradient that is the step's argument first.
  """
  flat = [x for state in states for x in state]
  outs = [
    *(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in flat),
    *(jax.ShapeDtypeStruct(g.shape, jnp.float32) for g in grads),
  ]
  # Operand 0 is coef. Empty scales (float moments) are not aliased.
  aliases = {1 + i: i for i, x in enumerate(flat) if x.size or i % 4 in (0, 2)}
  for i, f in enumerate(free or ()):
    if f:
      aliases[1 + len(flat) + i] = len(flat) + i
  index, offsets, rows, rests = (
    np.asarray(col, np.int64) for col in zip(*layout, strict=True)
  )
  return jax.ffi.ffi_call(
    TARGET, outs, input_output_aliases=aliases, vmap_method="sequential"
  )(coef, *flat, *grads, states=index, offsets=offsets, rows=rows, rests=rests)
