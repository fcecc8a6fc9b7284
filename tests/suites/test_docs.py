"""Builds the documentation site as CI does: ``sphinx -W --keep-going``, every
reference to an adam_jax name resolved (nitpicky), every page and guide cell
executed, and the seven notebooks executed in their quick mode.

This build is also the notebooks' test: a cell that raises fails it, and each
notebook's page must show a figure. One execution serves both.
"""

import re

import pytest

import adam_jax
from tests._procs import REPO
from tests._procs import run_python

# One build for every test here: one worker runs them all.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("docs")]

NOTEBOOKS = sorted(p.stem for p in (REPO / "notebooks").glob("*.ipynb"))
GUIDES = sorted(p.stem for p in (REPO / "docs" / "guides").glob("*.md"))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
  pytest.importorskip("sphinx")
  pytest.importorskip("myst_nb")
  out = tmp_path_factory.mktemp("docs")
  html = out / "html"
  build = run_python(
    *("-m", "sphinx", "-W", "--keep-going", "-b", "html", "-q"),
    *("-d", str(out / "doctrees"), str(REPO / "docs"), str(html)),
    cwd=REPO,
    timeout=1800,
    env={"ADAM_JAX_DOCS_NOTEBOOKS": "quick", "MPLCONFIGDIR": str(out / "mpl")},
  )
  assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-8000:]
  return html


def _text(path):
  assert path.is_file(), path
  return path.read_text(encoding="utf-8")


def test_the_site_builds_without_warnings_and_has_every_page(site):
  for page in ("index", "getting_started", "api", "changelog", "examples/index"):
    _text(site / f"{page}.html")
  assert {"reproducing", "low_memory", "sharding", "guarantees"} <= set(GUIDES)
  assert {"optax_differences", "performance", "variants"} <= set(GUIDES)
  for guide in GUIDES:
    _text(site / "guides" / f"{guide}.html")
  for name in adam_jax.__all__:
    page = _text(site / "_autosummary" / f"adam_jax.{name}.html")
    assert f"adam_jax.{name}" in page, name


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_each_notebook_page_shows_its_outputs_and_a_figure(site, notebook):
  page = _text(site / "examples" / f"{notebook}.html")
  assert "cell_output" in page, f"{notebook}: no cell output on its page"
  figures = re.findall(r'<img[^>]+src="[^"]+\.png"', page)
  assert figures, f"{notebook}: no figure on its page"


def test_maths_is_rendered_not_shown_as_source(site):
  page = _text(site / "_autosummary" / "adam_jax.adamw.html")
  assert 'class="math notranslate nohighlight"' in page
  # MathJax ships with the site (sphinx-mathjax-offline): no CDN needed.
  assert re.search(r'<script[^>]+src="[./]*_static/mathjax/tex-chtml\.js"', page)
  assert (site / "_static" / "mathjax" / "tex-chtml.js").is_file()
  for guide in GUIDES:
    body = _text(site / "guides" / f"{guide}.html")
    assert "$$" not in re.sub(r"<pre>.*?</pre>", "", body, flags=re.S), guide
