"""The public API as tools read it: every name in ``adam_jax.__all__`` exists,
has a page in the API reference (``docs/api.md``), and the annotations of every public function, class and method are the
types themselves, not strings (as optax's are), so tools that read
``inspect.signature(f).parameters[...].annotation`` (optax's "accepts a
schedule" checks, wrappers, docs generators without ``eval_str``) see them.
"""

import inspect
import re

import optax
import pytest

import adam_jax
from tests._procs import REPO


def _callables(name):
  obj = getattr(adam_jax, name)
  if not inspect.isclass(obj):
    return [(name, obj)]
  out = [(name, obj)]
  for attr, member in vars(obj).items():
    if inspect.isfunction(member) and (not attr.startswith("_") or attr == "__init__"):
      out.append((f"{name}.{attr}", member))
  return out


CALLABLES = [c for name in adam_jax.__all__ for c in _callables(name)]


def test_all_names_exist_and_are_documented():
  assert sorted(adam_jax.__all__) == adam_jax.__all__
  for name in adam_jax.__all__:
    obj = getattr(adam_jax, name)
    assert inspect.getdoc(obj), name


def test_every_public_name_has_an_api_page():
  """The API reference's autosummary tables list exactly ``__all__``: each
  entry becomes a page, so a name added without one fails here (and the docs
  build, ``tests/suites/test_docs.py``, checks each page renders)."""
  api = (REPO / "docs" / "api.md").read_text(encoding="utf-8")
  tables = re.findall(r"\.\. autosummary::\n(?:   :.*\n)*\n((?:   \S+\n)+)", api)
  listed = [name.strip() for table in tables for name in table.splitlines()]
  assert sorted(listed) == sorted(adam_jax.__all__)
  assert len(listed) == len(set(listed)), "a name is listed twice"


@pytest.mark.parametrize("qualname,obj", CALLABLES, ids=[q for q, _ in CALLABLES])
def test_annotations_are_types_not_strings(qualname, obj):
  try:
    signature = inspect.signature(obj)
  except (TypeError, ValueError):  # e.g. a NamedTuple's generated __new__
    pytest.skip(f"{qualname} has no signature")
  annotations = {p.name: p.annotation for p in signature.parameters.values()}
  annotations["return"] = signature.return_annotation
  for where, annotation in annotations.items():
    assert not isinstance(annotation, str), (qualname, where, annotation)


def test_learning_rate_is_annotated_as_optax_does():
  """optax's own check for "this argument takes a schedule" compares the
  annotation with ``optax.ScalarOrSchedule``."""
  for name in ("adam", "adamw", "nadam", "nadamw", "amsgrad", "adamax"):
    ours = inspect.signature(getattr(adam_jax, name)).parameters["learning_rate"]
    theirs = inspect.signature(getattr(optax, name)).parameters["learning_rate"]
    assert ours.annotation == theirs.annotation == optax.ScalarOrSchedule, name
