"""The minimum versions CI tests: ``name==floor`` for every package below,
read from the ``>=`` floors in pyproject.toml (dependencies and the ``unit``
extra), one per line, for ``pip install``.

With ``--unit``, the ``unit`` extra's other requirements follow, as declared,
so that everything the unit tier needs installs without adam_jax itself
(CI installs it afterwards with ``--no-deps``).

With ``--check``, compares the installed versions with those floors instead
and exits 1 naming any that differ.
"""

from importlib import metadata
from pathlib import Path
import re
import sys
import tomllib

PACKAGES = ("jax", "jaxlib", "optax", "numpy", "flax", "orbax-checkpoint")


def _project() -> dict:
  path = Path(__file__).resolve().parent.parent / "pyproject.toml"
  return tomllib.loads(path.read_text())["project"]


def _name(requirement: str) -> str:
  return re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)


def floors() -> dict[str, str]:
  project = _project()
  requirements = project["dependencies"] + project["optional-dependencies"]["unit"]
  found = {}
  for requirement in requirements:
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9A-Za-z.]*)", requirement)
    if match and match.group(1) in PACKAGES:
      found[match.group(1)] = match.group(2)
  missing = [name for name in PACKAGES if name not in found]
  if missing:
    sys.exit(f"pyproject.toml declares no '>=' floor for {missing}")
  return found


def _release(version: str) -> tuple[int, ...]:
  """``1.26`` and ``1.26.0`` are the same release."""
  parts = [int(x) for x in version.split(".")]
  while parts and parts[-1] == 0:
    parts.pop()
  return tuple(parts)


def main() -> None:
  pins = floors()
  if sys.argv[1:] == ["--check"]:
    wrong = {
      name: metadata.version(name)
      for name, floor in pins.items()
      if _release(metadata.version(name)) != _release(floor)
    }
    for name, floor in pins.items():
      print(f"{name}: declared floor {floor}, installed {metadata.version(name)}")
    if wrong:
      sys.exit(f"installed versions are not the declared floors: {wrong}")
    return
  for name, floor in pins.items():
    print(f"{name}=={floor}")
  if sys.argv[1:] == ["--unit"]:
    for requirement in _project()["optional-dependencies"]["unit"]:
      if _name(requirement) not in pins:
        print(requirement)


if __name__ == "__main__":
  main()
