"""The Python standard library's sources, parsed: real English text on every machine (PSF
licence), so demos, tests and a retrieval benchmark need no download.

Read with `ast` (nothing is imported or executed), files in sorted order: deterministic for one
Python version. Used by data/sources.py (pretraining text) and data/evalsets/pydoc_set.py (a
retrieval benchmark built from docstrings).
"""

import ast
import sysconfig
from pathlib import Path
from typing import Iterator

SKIP_DIRS = frozenset({"test", "tests", "idlelib", "site-packages"})


def _root() -> Path:
  return Path(sysconfig.get_paths()["stdlib"])


def source_paths() -> list[Path]:
  """The stdlib .py files read, in order (test suites, IDLE and site-packages left out)."""
  root = _root()
  return [p for p in sorted(root.rglob("*.py"))
          if not SKIP_DIRS.intersection(p.relative_to(root).parts)]


def parsed_modules() -> Iterator[tuple[str, ast.Module]]:
  """(dotted module name, syntax tree) of every parseable stdlib .py file, test suites left out."""
  root = _root()
  for path in source_paths():
    parts = path.relative_to(root).with_suffix("").parts
    try:
      tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError):  # Python 2 examples, odd encodings: not worth the text
      continue
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    yield name, tree
