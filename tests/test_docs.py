"""The documentation against the code it describes, so that neither can drift from the other.

- docs/configuration.md: every key of configs/base.py and configs/finetune.py has one row with
  its default, and every preset table gives each preset's value of every key a preset changes,
  compared with the real ConfigDicts (a missing, extra or wrong key is named in the failure).
- README.md and docs/: every relative link points at a file of the repository, no link leaves
  it, and every `python -m retromae_jax...` program named exists.
- README.md holds the two commands that .ci/run runs, verbatim.
"""

import ast
import os
import re

import pytest

from configs import base as base_config
from configs import finetune as finetune_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DOC_NAME = "docs/configuration.md"
CONFIG_DOC = os.path.join(ROOT, CONFIG_DOC_NAME)
# Heading of the section that documents each config file, and the config's presets.
CONFIGS = {
    "configs/base.py": (base_config.get_config, tuple(base_config.MODEL_SHAPES)),
    "configs/finetune.py": (finetune_config.get_config, finetune_config.PRESETS),
}
DEFAULT_PRESET = "base"


def _flatten(tree: dict, prefix: str = "") -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[prefix + key] = value
  return flat


def _config(path: str, preset: str) -> dict:
  get_config, _ = CONFIGS[path]
  return _flatten(get_config(preset).to_dict())


def _sections(text: str) -> dict:
  """'## `configs/x.py` ...' heading -> the lines up to the next '## ' heading."""
  sections, current = {}, None
  for line in text.splitlines():
    if line.startswith("## "):
      current = next((p for p in CONFIGS if f"`{p}`" in line), None)
      if current:
        sections[current] = []
    elif current:
      sections[current].append(line)
  return sections


def _tables(lines: list[str]) -> list[tuple[list[str], list[tuple[int, list[str]]]]]:
  """Markdown tables as (header cells, [(line index, row cells)])."""
  tables, i = [], 0
  while i < len(lines):
    if lines[i].startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
      header = _cells(lines[i])
      rows, i = [], i + 2
      while i < len(lines) and lines[i].startswith("|"):
        rows.append((i, _cells(lines[i])))
        i += 1
      tables.append((header, rows))
    else:
      i += 1
  return tables


def _cells(line: str) -> list[str]:
  return [c.strip() for c in line.strip().strip("|").split("|")]


def _value(cell: str):
  """A table cell as a Python value: `0.3` -> 0.3, `True`, `''` -> '', `pydoc` -> 'pydoc'."""
  cell = cell.strip().strip("`")
  try:
    return ast.literal_eval(cell)
  except (ValueError, SyntaxError):
    return cell


def _same(doc, real) -> bool:
  if isinstance(real, bool) or isinstance(doc, bool):
    return type(doc) is type(real) and doc == real
  if isinstance(real, (int, float)) and isinstance(doc, (int, float)):
    return doc == real or abs(doc - real) <= 1e-12 * max(abs(real), 1.0)
  return doc == real


@pytest.fixture(scope="module")
def doc_tables():
  with open(CONFIG_DOC, encoding="utf-8") as f:
    sections = _sections(f.read())
  missing = sorted(set(CONFIGS) - set(sections))
  assert not missing, f"{CONFIG_DOC_NAME}: no '## `PATH`' section for {missing}"
  return {path: _tables(lines) for path, lines in sections.items()}


@pytest.mark.parametrize("path", sorted(CONFIGS))
def test_every_key_and_default_is_documented(doc_tables, path):
  tables = [rows for header, rows in doc_tables[path] if header[:2] == ["key", "default"]]
  assert tables, f"{CONFIG_DOC_NAME} {path}: no table with the header | key | default | meaning |"
  real = _config(path, DEFAULT_PRESET)
  problems, documented = [], {}
  for rows in tables:
    for _, cells in rows:
      if len(cells) != 3:
        problems.append(f"row {cells[0]} has {len(cells)} cells, expected 3 (a '|' in the text?)")
        continue
      key, default, meaning = cells[0].strip("`"), cells[1], cells[2]
      if key in documented:
        problems.append(f"{key}: documented twice")
      documented[key] = default
      if not meaning:
        problems.append(f"{key}: the meaning is empty")
  for key in sorted(set(real) - set(documented)):
    problems.append(f"{key}: in {path} (default {real[key]!r}) but not in the table: add a row")
  for key in sorted(set(documented) - set(real)):
    problems.append(f"{key}: in the table but not in {path}: remove the row")
  for key in sorted(set(real) & set(documented)):
    if not _same(_value(documented[key]), real[key]):
      problems.append(f"{key}: the table says {documented[key]}, {path} says {real[key]!r}")
  assert not problems, f"{CONFIG_DOC_NAME} vs {path}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("path", sorted(CONFIGS))
def test_preset_tables_match_the_presets(doc_tables, path):
  _, presets = CONFIGS[path]
  tables = [(h, rows) for h, rows in doc_tables[path] if h[0] == "key" and h[1:] == list(presets)]
  assert len(tables) == 1, (f"{CONFIG_DOC_NAME} {path}: expected one preset table with the header "
                            f"| key | {' | '.join(presets)} |")
  real = {p: _config(path, p) for p in presets}
  changed = {k for k in real[DEFAULT_PRESET] if len({repr(real[p][k]) for p in presets}) > 1}
  problems, documented = [], set()
  for _, cells in tables[0][1]:
    key = cells[0].strip("`")
    documented.add(key)
    if key not in real[DEFAULT_PRESET]:
      problems.append(f"{key}: in the preset table but not in {path}")
      continue
    for preset, cell in zip(presets, cells[1:]):
      if not _same(_value(cell), real[preset][key]):
        problems.append(f"{key}: preset {preset}: the table says {cell}, {path} says "
                        f"{real[preset][key]!r}")
  for key in sorted(changed - documented):
    problems.append(f"{key}: the presets set it ({ {p: real[p][key] for p in presets} }) but the "
                    "preset table has no row")
  assert not problems, f"{CONFIG_DOC_NAME} presets vs {path}:\n  " + "\n  ".join(problems)


def _doc_files() -> list[str]:
  docs = os.path.join(ROOT, "docs")
  return [os.path.join(ROOT, "README.md")] + sorted(
      os.path.join(docs, n) for n in os.listdir(docs) if n.endswith(".md"))


_LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_links_stay_inside_the_repository():
  problems = []
  for path in _doc_files():
    name = os.path.relpath(path, ROOT)
    with open(path, encoding="utf-8") as f:
      text = f.read()
    for target in _LINK.findall(text):
      if re.match(r"[a-z]+:", target) or target.startswith("/"):
        problems.append(f"{name}: {target} leaves the repository")
        continue
      resolved = os.path.normpath(os.path.join(os.path.dirname(path), target.split("#")[0]))
      if not resolved.startswith(ROOT + os.sep) or not os.path.exists(resolved):
        problems.append(f"{name}: {target} is not a file of the repository")
  assert not problems, "\n".join(problems)


def test_named_programs_exist():
  problems = []
  for path in _doc_files():
    name = os.path.relpath(path, ROOT)
    with open(path, encoding="utf-8") as f:
      modules = set(re.findall(r"python -m ((?:retromae_jax|tests)(?:\.\w+)+)", f.read()))
    for module in sorted(modules):
      file = os.path.join(ROOT, *module.split(".")) + ".py"
      if not os.path.isfile(file):
        problems.append(f"{name}: `python -m {module}`: no {os.path.relpath(file, ROOT)}")
        continue
      with open(file, encoding="utf-8") as f:
        if "__main__" not in f.read():
          problems.append(f"{name}: `python -m {module}`: the module has no main program")
  assert not problems, "\n".join(problems)


def test_readme_holds_the_ci_commands():
  with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
    commands = [l for l in f.read().splitlines() if l.strip() and not l.startswith(("#", "set ",
                                                                                     "cd "))]
  assert len(commands) == 2, f".ci/run: expected the README's two commands, found {commands}"
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    readme = f.read()
  for command in commands:
    assert command in readme, f"README.md lacks the .ci/run command: {command}"
