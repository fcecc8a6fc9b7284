"""Sphinx configuration of the adam_jax documentation.

Build: ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
``ADAM_JAX_DOCS_NOTEBOOKS`` says how the example notebooks run: ``full`` (the
default, what the published site shows), ``quick`` (their quick mode, as the
test suite runs them) or ``off`` (not executed: the pages show code only).
"""

import os
from pathlib import Path
import shutil
import sys

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import adam_jax  # noqa: E402

# The example pages are the notebooks of notebooks/, copied here at every build
# (and ignored by git) so that the links between them resolve as pages.
for _notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
  shutil.copyfile(_notebook, ROOT / "docs" / "examples" / _notebook.name)

project = "adam_jax"
author = "the adam_jax authors"
copyright = "2026, the adam_jax authors"
release = adam_jax.__version__
version = release

extensions = [
  "myst_nb",
  "sphinx.ext.autodoc",
  "sphinx.ext.autosummary",
  "sphinx.ext.napoleon",
  "sphinx.ext.mathjax",
  "sphinx.ext.viewcode",
  "sphinx_copybutton",
  # MathJax served with the site, not from a CDN: the maths renders offline too.
  "sphinx-mathjax-offline",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "_templates", "**.ipynb_checkpoints"]
suppress_warnings = ["mystnb.unknown_mime_type"]

# Every reference to a name of this package must resolve. References to other
# packages (optax, jax, flax, numpy) are shown as code: the build runs offline,
# without their inventories.
nitpicky = True
nitpick_ignore_regex = [
  (r"py:.*", r"(optax|jax|jaxlib|flax|numpy|np|jnp|chex|orbax|typing)(\..*)?"),
  (r"py:.*", r"(Array|ArrayLike|Any|Callable|Sequence|Mapping|NamedTuple|PyTree)"),
  (r"py:.*", r"(ScalarOrSchedule|Params|Updates|OptState|DTypeLike|Sharding)"),
  (r"py:.*", r"(ArrayTree|adam_jax\._src\..*|collections\..*)"),
  (r"py:.*", r"(int|float|bool|str|tuple|dict|list|None|object|type)"),
]

autosummary_generate = True
autodoc_typehints = "none"  # the docstrings say what each argument takes
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
# A state's fields are described once, by its docstring's Attributes section,
# in words (their type annotations are long unions that say less).
napoleon_use_ivar = True
napoleon_attr_annotations = False

myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

_notebooks = os.environ.get("ADAM_JAX_DOCS_NOTEBOOKS", "full")
if _notebooks not in ("full", "quick", "off"):
  raise ValueError(
    f"ADAM_JAX_DOCS_NOTEBOOKS must be 'full', 'quick' or 'off', got {_notebooks!r}"
  )
if _notebooks == "quick":
  os.environ["ADAM_JAX_NOTEBOOK_QUICK"] = "1"  # read by each notebook's kernel
else:
  os.environ.pop("ADAM_JAX_NOTEBOOK_QUICK", None)
nb_execution_mode = "force"
nb_execution_excludepatterns = ["examples/*"] if _notebooks == "off" else []
nb_execution_timeout = 3600
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True

html_theme = "sphinx_book_theme"
html_title = f"adam_jax {release}"
html_theme_options = {
  "show_toc_level": 2,
  "navigation_with_keys": False,
}


def _skip_namedtuple_fields(app, what, name, obj, skip, options):
  """NamedTuple fields' properties say only "Alias for field number k"; the
  class's Attributes section already describes each field."""
  if (getattr(obj, "__doc__", None) or "").startswith("Alias for field number"):
    return True
  return None


def setup(app):
  app.connect("autodoc-skip-member", _skip_namedtuple_fields)
