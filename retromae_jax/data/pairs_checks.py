"""Start-up checks of fine-tuning data (config.data.train, data.hard_negatives), before the model
is compiled: the faults that otherwise train silently on less than the user thinks.

Counted over every line (every judged query of a BEIR split), reported in one log line each with
file:line (or the qrels file and query id) of the first cases:
  unusable       an empty query, or no positive (no `pos`, `"pos": []`, only blank texts):
                 data/pairs.py drops these lines; more than data.max_unusable_fraction of them
                 stops the run (one line), fewer give a warning
  empty passage  a blank text among `pos` / `neg` (dropped from its list): a warning
  short group    fewer negatives than data.group_size - 1: the group is padded with empty,
                 masked slots (data/pairs.py); more than data.max_short_groups_fraction of the
                 usable lines stops the run, fewer give a warning naming the most any line has
                 (a source with no negatives at all trains on in-batch negatives: finetune.py
                 warns about that case)
  hard negatives a BEIR source's data.hard_negatives file matching fewer than
                 data.min_hard_negatives_coverage of the split's queries stops the run (mined
                 from another folder or split), a partial match gives a warning

data.train may list several sources with weights ('jsonl:a@2,beir:DIR@1'): each is checked.
"""

import collections
import dataclasses

from absl import logging

from retromae_jax.data.evalsets import beir
from retromae_jax.data import jsonl
from retromae_jax.data import mixture
from retromae_jax.data import pairs

_SHOWN = 3  # first cases named per kind


@dataclasses.dataclass
class Counts:
  """Counts of one source's lines by problem, with the first places of each."""
  where: str
  lines: int = 0
  most_negatives: int = 0
  found: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(list))
  totals: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def add(self, kind: str, place: str) -> None:
    self.totals[kind] += 1
    if len(self.found[kind]) < _SHOWN:
      self.found[kind].append(place)

  def places(self, kind: str) -> str:
    more = self.totals[kind] - len(self.found[kind])
    return ", ".join(self.found[kind]) + (f" and {more} more" if more else "")


def split_sources(train: str) -> list[str]:
  """'jsonl:a@2,beir:DIR@1' -> ['jsonl:a', 'beir:DIR']: the sources of data.train as the
  fine-tuning program reads them (data/mixture.py)."""
  return [dataset.source for dataset in mixture.parse(train)]


def _check_group(counts: Counts, place: str, query: str, pos: list, neg: list,
                 group_size: int) -> None:
  counts.lines += 1
  if any(not t.strip() for t in pos + neg):
    counts.add("empty passage", place)
  pos = [t for t in pos if t.strip()]
  neg = [t for t in neg if t.strip()]
  if not query.strip():
    counts.add("empty query", place)
  elif not pos:
    counts.add("no positive", place)
  else:
    counts.most_negatives = max(counts.most_negatives, len(neg))
    if len(neg) < group_size - 1:
      counts.add("short group", place)


def jsonl_counts(pattern: str, group_size: int) -> Counts:
  import tensorflow as tf  # gfile: local paths and gs:// alike

  files = sorted(tf.io.gfile.glob(pattern))
  if not files:
    raise ValueError(f"data.train 'jsonl:{pattern}': no file matches")
  counts = Counts(f"jsonl:{pattern}")
  for path in files:
    for line_no, record in jsonl.records(path):
      if not isinstance(record.get("query"), str):
        raise ValueError(f"{path}:{line_no}: expected an object with a string 'query' field")
      _check_group(counts, f"{path}:{line_no}", record["query"],
                   pairs.text_field(path, line_no, record, "pos"),
                   pairs.text_field(path, line_no, record, "neg"),
                   group_size)
  return counts


def beir_counts(beir_dir: str, split: str, group_size: int, mined: dict) -> Counts:
  data = beir.load(beir_dir, split)
  qrels = beir.qrels_path(beir_dir, split)
  counts = Counts(f"beir:{beir_dir}")
  for qid, judged in data.qrels.items():
    pos = [data.corpus[d] for d, rel in judged.items() if rel > 0]
    neg = [data.corpus[d] for d, rel in judged.items() if rel <= 0]
    neg += [t for t in mined.get(data.queries[qid], ()) if t not in pos and t not in neg]
    _check_group(counts, f"{qrels} query {qid!r}", data.queries[qid], pos, neg, group_size)
  return counts


def hard_negatives(path: str, beir_dir: str, split: str, min_coverage: float) -> dict:
  """{query text: negatives} of the mined file, checked to match the split's queries."""
  mined: dict[str, list[str]] = {}
  for line_no, record in jsonl.records(path):
    if not isinstance(record.get("query"), str):
      raise ValueError(f"{path}:{line_no}: expected an object with a string 'query' field")
    mined.setdefault(record["query"], []).extend(
        t for t in pairs.text_field(path, line_no, record, "neg") if t.strip())
  queries = beir.load(beir_dir, split).queries.values()
  matched = sum(q in mined for q in queries)
  coverage = matched / max(len(queries), 1)
  message = (f"config.data.hard_negatives {path}: matches {matched} of the {len(queries)} "
             f"queries of {beir_dir} split {split!r} ({coverage:.0%})")
  if coverage < min_coverage:
    raise ValueError(f"{message}, fewer than data.min_hard_negatives_coverage={min_coverage:g}; "
                     "mine it from the same folder and split")
  if matched < len(queries):
    logging.warning("%s; the others train on their judged negatives only", message)
  return mined


@dataclasses.dataclass(frozen=True)
class PairsData:
  """What the start-up checks read of config.data (trainers/settings.pairs_data)."""
  train: str
  split: str
  hard_negatives: str
  group_size: int
  max_unusable_fraction: float
  max_short_groups_fraction: float
  min_hard_negatives_coverage: float


def check(d: PairsData) -> None:
  """Checks the fine-tuning sources of `d`; raises ValueError in one line past a threshold,
  logs a warning below it (module docstring)."""
  max_unusable, max_short = d.max_unusable_fraction, d.max_short_groups_fraction
  for key in ("max_unusable_fraction", "max_short_groups_fraction",
              "min_hard_negatives_coverage"):
    value = getattr(d, key)
    if not 0 <= float(value) <= 1:
      raise ValueError(f"config.data.{key}: expected a fraction in [0, 1], got {value}")
  for source in split_sources(d.train):
    scheme, _, arg = source.partition(":")
    if scheme == "jsonl" and arg:
      counts = jsonl_counts(arg, d.group_size)
    elif scheme == "beir" and arg or source == "pydoc":
      if source == "pydoc":
        from retromae_jax.data.evalsets import pydoc_set  # builds the set on first use
        arg = pydoc_set.cached_dir()
      mined = hard_negatives(d.hard_negatives, arg, d.split,
                             d.min_hard_negatives_coverage) if d.hard_negatives else {}
      counts = beir_counts(arg, d.split, d.group_size, mined)
    else:
      continue  # unknown schemes: data/pairs.py names them
    _judge(counts, d.group_size, max_unusable, max_short)


def _judge(counts: Counts, group_size: int, max_unusable: float, max_short: float) -> None:
  where, lines = f"data.train {counts.where}", max(counts.lines, 1)
  unusable = counts.totals["empty query"] + counts.totals["no positive"]
  if unusable:
    detail = "; ".join(f"{kind} {counts.totals[kind]} ({counts.places(kind)})"
                       for kind in ("empty query", "no positive") if counts.totals[kind])
    message = (f"{where}: {unusable} of {counts.lines} lines unusable ({unusable / lines:.1%}): "
               f"{detail}")
    if unusable == counts.lines or unusable / lines > max_unusable:
      raise ValueError(f"{message}; more than data.max_unusable_fraction={max_unusable:g}: fix "
                       "the data or raise the threshold")
    logging.warning("%s; these lines are left out", message)
  if counts.totals["empty passage"]:
    logging.warning("%s: %d lines with a blank passage text, left out of their lists (%s)", where,
                    counts.totals["empty passage"], counts.places("empty passage"))
  short = counts.totals["short group"]
  usable = max(counts.lines - unusable, 1)
  if short and not counts.most_negatives:
    # No negatives at all: in-batch negatives only, by design (finetune.py says so as well).
    return
  if short:
    message = (f"{where}: {short} of {usable} usable lines have fewer than data.group_size - 1 = "
               f"{group_size - 1} negatives (the most any line has: {counts.most_negatives}; "
               f"first {counts.places('short group')}); their groups are padded with masked "
               f"empty passages")
    if short / usable > max_short:
      raise ValueError(f"{message}; more than data.max_short_groups_fraction={max_short:g}: set "
                       f"--config.data.group_size={counts.most_negatives + 1} or mine negatives")
    logging.warning("%s; --config.data.group_size=%d fits every line", message,
                    counts.most_negatives + 1)
