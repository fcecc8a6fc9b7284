"""Registers every adam_jax state type for ``jax.export`` serialization.

``jax.export`` serializes the structure of an exported function's arguments
and results, and only knows standard containers and the node types
registered with it. So a jitted ``update`` whose state holds 8-bit moments
(:class:`adam_jax.QuantizedMoment`), packed moments
(:class:`adam_jax.PackedMoments`) or one of adam_jax's NamedTuple states
could be exported but not ``serialize()``-d. Importing ``adam_jax`` imports
this module, which registers all of them, with the public
``jax.export.register_pytree_node_serialization`` and
``jax.export.register_namedtuple_serialization``.

adam_jax's default states *are* optax's classes (``optax.ScaleByAdamState``,
``optax.EmptyState``, ...), which optax does not register, so they are
registered too (as ``"optax.<Name>"``), unless something registered them
first: a future optax that registers them itself wins.

Example:
  >>> import jax
  >>> import jax.numpy as jnp
  >>> import adam_jax
  >>> tx = adam_jax.adam(1e-2, mu_dtype="int8", nu_dtype="int8", int8_min_size=256)
  >>> params = {f"b{i:02d}": jnp.ones(256) for i in range(70)}
  >>> state = tx.init(params)
  >>> type(state[0].mu).__name__, type(state[0].mu.chunks[0]).__name__
  ('PackedMoments', 'QuantizedMoment')
  >>> exported = jax.export.export(jax.jit(tx.update))(params, state, params)
  >>> restored = jax.export.deserialize(exported.serialize())
  >>> updates, new_state = restored.call(params, state, params)
  >>> jax.tree.structure(new_state) == jax.tree.structure(state)
  True
"""

import base64
from collections.abc import Callable
import json
from typing import Any

import jax
from jax import export
import jax.numpy as jnp
import optax

from adam_jax._src import alias
from adam_jax._src import averaging
from adam_jax._src import packing
from adam_jax._src import state
from adam_jax._src.storage import factored
from adam_jax._src.storage import int4
from adam_jax._src.storage import int8

# How jax.export reports a type, or a serialized name, registered before
# (a ValueError: there is no public way to ask whether a type is registered).
_DUPLICATE = "Duplicate serialization registration for "
# Bumped when the serialized layout changes; deserialization checks it.
_LAYOUT_VERSION = 1

# adam_jax's own NamedTuple states.
_OWN_NAMEDTUPLES = (
  state.ScaleByAdamSkipState,
  state.ScaleByAmsgradSkipState,
  alias.KahanState,
  averaging.ParamAverageState,
)
# optax's NamedTuples that adam_jax's states are made of (or wrapped in, by
# optax.masked and optax.inject_hyperparams); missing ones are skipped.
_OPTAX_NAMEDTUPLES = (
  "ScaleByAdamState",
  "ScaleByAmsgradState",
  "EmptyState",
  "ScaleByScheduleState",
  "MaskedState",
  "MaskedNode",
  "InjectHyperparamsState",
  "InjectStatefulHyperparamsState",
)


def _register_once(register: Callable[..., Any], nodetype: type, **kwargs: Any) -> bool:
  """``register(nodetype, **kwargs)`` unless it is registered already.

  Returns:
    Whether this call registered it. jax raises a ``ValueError`` starting
    with ``_DUPLICATE`` when ``nodetype`` (or the serialized name) is taken:
    then the first registration wins (so importing this module again, or an
    optax that registers its classes itself, never raises). Any other error
    is raised. (A serialized name taken by another type leaves ``nodetype``
    unregistered: ``serialize()`` then names it.)
  """
  try:
    register(nodetype, **kwargs)
  except ValueError as err:
    if not str(err).startswith(_DUPLICATE):
      raise
    return False
  return True


def _is_namedtuple(x: Any) -> bool:
  return isinstance(x, type) and issubclass(x, tuple) and hasattr(x, "_fields")


def _treedef_to_json(treedef: Any) -> dict[str, str]:
  """A parameters' PyTreeDef as JSON.

  Standard containers (dicts with string keys, lists, tuples, None) go
  through ``PyTreeDef.serialize_using_proto``: a public, versioned protobuf
  that, unlike pickle, runs no code when read back (an exported artifact may
  come from anywhere) and names no Python module. Other nodes (NamedTuples,
  custom nodes) are stored as what jax.export itself writes for them: the
  serialized export of a function taking the tree, so they serialize exactly
  when they are registered with jax.export, as they must be anyway for the
  parameters to be exported.

  Raises:
    ValueError: the treedef holds a node jax.export cannot serialize.
  """
  try:
    return {"proto": base64.b64encode(treedef.serialize_using_proto()).decode()}
  except ValueError:  # a NamedTuple, custom node or non-string dict key
    pass
  leaves = [jax.ShapeDtypeStruct((), jnp.float32)] * treedef.num_leaves
  try:
    exported = export.export(jax.jit(lambda tree: ()))(treedef.unflatten(leaves))
    data = exported.serialize()
  except (ValueError, TypeError) as err:
    raise ValueError(
      f"adam_jax cannot serialize the parameters' structure {treedef} of a"
      " PackedMoments: it holds a dict with non-string keys or a node type"
      " not registered with jax.export.register_pytree_node_serialization or"
      f" jax.export.register_namedtuple_serialization ({err})"
    ) from err
  return {"export": base64.b64encode(data).decode()}


def _treedef_from_json(data: dict[str, str]) -> Any:
  """The inverse of :func:`_treedef_to_json`."""
  if "proto" in data:
    proto = base64.b64decode(data["proto"])
    registry = jax.tree_util.default_registry
    return jax.tree_util.PyTreeDef.deserialize_using_proto(registry, proto)
  blob = bytearray(base64.b64decode(data["export"]))
  in_tree: Any = export.deserialize(blob).in_tree  # ((tree,), {})
  (args, _kwargs) = in_tree.children()
  return args.children()[0]


def _serialize_packed(aux: tuple[packing.Layout, int]) -> bytes:
  """A :class:`PackedMoments`'s aux data ``(layout, n_own)`` as bytes."""
  layout, n_own = aux
  return json.dumps(
    {
      "version": _LAYOUT_VERSION,
      "treedef": _treedef_to_json(layout.treedef),
      "slots": [None if s is None else [int(i) for i in s] for s in layout.slots],
      "shapes": [None if s is None else [int(d) for d in s] for s in layout.shapes],
      "chunk_sizes": [int(n) for n in layout.chunk_sizes],
      "n_own": int(n_own),
    }
  ).encode("utf-8")


def _deserialize_packed(data: bytes) -> tuple[packing.Layout, int]:
  """The inverse of :func:`_serialize_packed`: a layout equal to the
  original (same treedef, tuples where JSON has lists)."""
  d = json.loads(bytes(data).decode("utf-8"))
  if d.get("version") != _LAYOUT_VERSION:
    raise ValueError(
      f"PackedMoments layout version {d.get('version')!r} is not supported by"
      f" this adam_jax (it reads version {_LAYOUT_VERSION})."
    )

  def tuples(xs: list[Any]) -> tuple[Any, ...]:
    return tuple(None if x is None else tuple(x) for x in xs)

  layout = packing.Layout(
    treedef=_treedef_from_json(d["treedef"]),
    slots=tuples(d["slots"]),
    shapes=tuples(d["shapes"]),
    chunk_sizes=tuple(d["chunk_sizes"]),
  )
  return layout, d["n_own"]


def _serialize_shape_aux(aux: tuple[tuple[int, ...], Any]) -> bytes:
  """A coded moment's static data, ``(shape, signed or axes)``, as JSON."""
  shape, extra = aux
  extra = extra if isinstance(extra, bool) else [int(a) for a in extra]
  return json.dumps([[int(d) for d in shape], extra]).encode("utf-8")


def _deserialize_shape_aux(data: bytes) -> tuple[tuple[int, ...], Any]:
  shape, extra = json.loads(bytes(data).decode("utf-8"))
  return tuple(shape), extra if isinstance(extra, bool) else tuple(extra)


def _register_all() -> None:
  """Registers adam_jax's state types and the optax ones they are made of."""
  _register_once(
    export.register_pytree_node_serialization,
    int8.QuantizedMoment,
    serialized_name="adam_jax.QuantizedMoment",
    serialize_auxdata=lambda aux: b"",  # aux is None
    deserialize_auxdata=lambda data: None,
  )
  _register_once(
    export.register_pytree_node_serialization,
    int4.Int4Moment,
    serialized_name="adam_jax.Int4Moment",
    serialize_auxdata=_serialize_shape_aux,
    deserialize_auxdata=_deserialize_shape_aux,
  )
  _register_once(
    export.register_pytree_node_serialization,
    factored.FactoredMoment,
    serialized_name="adam_jax.FactoredMoment",
    serialize_auxdata=_serialize_shape_aux,
    deserialize_auxdata=_deserialize_shape_aux,
  )
  _register_once(
    export.register_pytree_node_serialization,
    packing.PackedMoments,
    serialized_name="adam_jax.PackedMoments",
    serialize_auxdata=_serialize_packed,
    deserialize_auxdata=_deserialize_packed,
  )
  for cls in _OWN_NAMEDTUPLES:
    name = f"adam_jax.{cls.__name__}"
    _register_once(export.register_namedtuple_serialization, cls, serialized_name=name)
  seen: set[type] = set()
  for name in _OPTAX_NAMEDTUPLES:
    optax_cls: Any = getattr(optax, name, None)
    if _is_namedtuple(optax_cls) and optax_cls not in seen:
      seen.add(optax_cls)
      _register_once(
        export.register_namedtuple_serialization,
        optax_cls,
        serialized_name=f"optax.{name}",
      )


_register_all()
