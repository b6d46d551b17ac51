"""The one parser of source strings: `SCHEME:ARG`, a bare `pydoc`, and mixtures `A@W1,B@W2`.

Every program names its input by such a string (data.source, data.train, eval.data, --source,
--input): the pretraining corpus (jsonl:GLOB, text:GLOB, tfds:NAME[:SPLIT], pydoc,
pydoc:modules, prepared:DIR), fine-tuning pairs (jsonl:GLOB, beir:DIR, pydoc), evaluation sets
(beir:DIR or DIR, pydoc). This module splits the string; the reader of each scheme checks its
argument. Errors name the config key and say what was expected.
"""

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Source:
  scheme: str  # 'jsonl', 'text', 'tfds', 'pydoc', 'prepared', 'beir', ...
  arg: str  # what follows the first ':' ('' for a bare scheme)
  weight: float = 1.0  # in a mixture: normalised to sum 1 over its parts

  def __str__(self) -> str:
    return f"{self.scheme}:{self.arg}" if self.arg else self.scheme


PREPARED = "prepared"


def is_prepared(spec: str) -> bool:
  """A corpus (or mixture of corpora) prepared by tools/prepare: read by index."""
  return spec.startswith(PREPARED + ":")


def parse(spec: str, key: str, expected: str, schemes: tuple[str, ...],
          bare: tuple[str, ...] = ("pydoc",)) -> Source:
  """One source. `schemes` take an argument; `bare` ones may stand alone (pydoc)."""
  scheme, colon, arg = spec.partition(":")
  if (scheme in schemes and arg) or (scheme in bare and not colon):
    return Source(scheme, arg)
  raise ValueError(f"{key} {spec!r}: unknown or incomplete source; {expected}")


def parse_mixture(spec: str, key: str, expected: str, schemes: tuple[str, ...],
                  bare: tuple[str, ...] = (), what: str = "source") -> list[Source]:
  """'A@0.7,B@0.3' (each part as `parse` reads it; no @W means weight 1) -> its sources, with
  weights normalised to sum 1. `what` names a part in errors ('prepared corpus', ...)."""
  parts = []
  for part in spec.split(","):
    text, weight = part, "1"
    if "@" in part:
      text, _, weight = part.rpartition("@")
    try:
      value = float(weight)
    except ValueError:
      value = -1.0
    scheme, colon, arg = text.partition(":")
    if scheme not in schemes + bare:
      raise ValueError(f"{key} {spec!r}: {part!r} is not a {what}; {expected}")
    if not value > 0 or not math.isfinite(value) or (colon and not arg) or (
        scheme in schemes and not arg):
      raise ValueError(f"{key} {spec!r}: bad part {part!r}; {expected}")
    parts.append(Source(scheme, arg, value))
  total = sum(p.weight for p in parts)
  return [dataclasses.replace(p, weight=p.weight / total) for p in parts]


def beir_folder(spec: str) -> str | None:
  """The folder of an evaluation set or BEIR pairs source: DIR for 'beir:DIR' or a bare 'DIR';
  None for 'pydoc' (the embedded set, built on first use by data/evalsets/pydoc_set.py)."""
  if spec == "pydoc":
    return None
  return parse(spec, "eval.data", "expected beir:DIR, DIR or pydoc", schemes=("beir",)).arg \
      if spec.startswith("beir:") else spec
