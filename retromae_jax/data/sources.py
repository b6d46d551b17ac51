"""Document sources: a tf.data.Dataset of tf.string, one document per element, one process's share.

  jsonl:GLOB          lines {"text": ...} (FlagEmbedding's pretraining format); .gz accepted
  text:GLOB           one document per line; .gz accepted
  tfds:NAME[:SPLIT]   the 'text' feature of a prepared TFDS dataset in data.data_dir (gs:// works)
  pydoc               the docstrings of this Python's standard library (PSF licence): real English
                      text found on every machine, so demos and tests need no download;
                      one document per docstring
  pydoc:modules       the same text, one document per module (long documents: full chunks)

Unusable lines (empty, invalid JSON, no string "text", not UTF-8) are skipped, never fatal: a
billion-line corpus always has a few. They are counted, as they happen, in a SkipCounter: the
training loop reports its running counts in every logging window where they changed
(SkipCounter.report) and writes them to metrics.jsonl (SkipCounter.metrics); the pipeline also
logs them at the end of every epoch. A source with no usable line at all is refused at start-up
(trainers/preflight.py).
"""

import ast
import functools
import hashlib
import json
import os
import sys
from pathlib import Path
import threading

import numpy as np
import tensorflow as tf

from retromae_jax.data import source_spec, stdlib_docs

_EXPECTED = "expected jsonl:GLOB, text:GLOB, tfds:NAME[:SPLIT], pydoc or pydoc:modules"
_PARSE_BATCH = 256  # lines per parser call: amortises the Python call, keeps memory bounded
_PYDOC_MIN_CHARS = 200  # shorter docstrings are mostly one-liners ("Return x.")


class SkipCounter:
  """Counts of skipped input lines by reason. Thread-safe: tf.data runs parsers in its threads."""

  REASONS = ("empty", "invalid_json", "missing_text", "non_utf8")

  def __init__(self):
    self._lock = threading.Lock()
    self._counts = dict.fromkeys(self.REASONS, 0)
    self._reported = 0  # the total at the last report()

  def add(self, reason: str, n: int = 1) -> None:
    with self._lock:
      self._counts[reason] += n

  def as_dict(self) -> dict[str, int]:
    with self._lock:
      return dict(self._counts)

  @property
  def total(self) -> int:
    return sum(self.as_dict().values())

  def metrics(self) -> dict[str, int]:
    """Running counts for metrics.jsonl: {'skipped_<reason>': count}."""
    return {f"skipped_{k}": v for k, v in self.as_dict().items()}

  def report(self) -> str | None:
    """'skipped input lines so far: invalid_json 3, empty 1 (+2 since the last report)' when
    the counts changed since the previous call, else None."""
    counts = self.as_dict()
    total = sum(counts.values())
    with self._lock:
      new, self._reported = total - self._reported, total
    if not new:
      return None
    shown = ", ".join(f"{k} {v}" for k, v in counts.items() if v)
    return f"skipped input lines so far: {shown} (+{new} since the last report)"

  def __repr__(self):
    return f"SkipCounter({self.as_dict()})"


def documents(source: str, data_dir: str = "", process_index: int = 0, process_count: int = 1,
              *, skips: SkipCounter | None = None) -> tf.data.Dataset:
  """This process's documents of `source` (see the module docstring), in a deterministic order."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, process_count={process_count})")
  skips = skips if skips is not None else SkipCounter()
  if source_spec.is_prepared(source):  # chunks, not documents: read by data/pretrain/prepared.py
    raise ValueError(f"data.source {source!r}: a prepared corpus holds chunks, not documents; "
                     f"here {_EXPECTED}")
  parsed = source_spec.parse(source, "data.source", _EXPECTED,
                             schemes=("jsonl", "text", "tfds", "pydoc"))
  scheme, arg = parsed.scheme, parsed.arg
  if scheme == "pydoc" and arg in ("", "modules"):
    ds = tf.data.Dataset.from_tensor_slices(list(pydoc_texts(per_module=arg == "modules")))
    return ds.shard(process_count, process_index)
  if scheme in ("jsonl", "text"):
    lines = _text_lines(source, arg, process_index, process_count)
    return _parse(lines, jsonl_texts if scheme == "jsonl" else plain_texts, skips)
  if scheme == "tfds":
    texts = _tfds_texts(source, arg, data_dir, process_index, process_count)
    return _parse(texts, plain_texts, skips)
  raise ValueError(f"data.source {source!r}: unknown or incomplete source; {_EXPECTED}")


def _text_lines(source, pattern, process_index, process_count):
  files = sorted(tf.io.gfile.glob(pattern))
  if not files:
    raise ValueError(f"data.source {source!r}: no file matches {pattern!r}")
  # Whole files per process when that splits the work evenly enough (no process reads lines it
  # throws away); otherwise every process reads everything and keeps every count-th line.
  by_file = len(files) % process_count == 0 or len(files) >= 10 * process_count
  if by_file:
    files = files[process_index::process_count]
  # TextLineDataset takes one compression type, so consecutive runs of files that share one
  # are read as separate datasets, concatenated in the sorted order.
  ds = None
  start = 0
  for end in range(1, len(files) + 1):
    if end == len(files) or files[end].endswith(".gz") != files[start].endswith(".gz"):
      part = tf.data.TextLineDataset(
          files[start:end], compression_type="GZIP" if files[start].endswith(".gz") else "")
      ds = part if ds is None else ds.concatenate(part)
      start = end
  return ds if by_file else ds.shard(process_count, process_index)


def _tfds_texts(source, arg, data_dir, process_index, process_count):
  import tensorflow_datasets as tfds  # slow to import: only when asked for

  name, _, split = arg.partition(":")
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except Exception as e:  # DatasetNotFoundError and friends; their messages span many lines
    raise ValueError(f"data.source {source!r}: TFDS dataset {name!r} not found "
                     f"({type(e).__name__}); expected a registered TFDS name") from None
  if "text" not in builder.info.features:
    raise ValueError(f"data.source {source!r}: TFDS dataset {name!r} has no 'text' feature "
                     f"(features: {sorted(builder.info.features)})")
  split = split or "train"
  try:
    ds = builder.as_dataset(split=tfds.even_splits(split, n=process_count)[process_index],
                            shuffle_files=False)
  except Exception as e:
    raise ValueError(f"data.source {source!r}: cannot read split {split!r} of {name!r} from "
                     f"data_dir {data_dir!r} ({type(e).__name__}); expected a prepared dataset "
                     "(tfds build)") from None
  return ds.map(lambda ex: ex["text"])


def _parse(lines: tf.data.Dataset, parse_fn, skips: SkipCounter) -> tf.data.Dataset:
  """Runs parse_fn over batches of raw lines in Python; its survivors become the documents."""

  def parse(batch):
    return np.array(parse_fn(batch, skips), dtype=object).reshape(-1)

  def tf_parse(batch):
    texts = tf.numpy_function(parse, [batch], tf.string, stateful=True)
    texts.set_shape([None])
    return texts

  return lines.batch(_PARSE_BATCH).map(tf_parse).unbatch()


def _decode(line: bytes, skips: SkipCounter) -> str | None:
  try:
    text = line.decode("utf-8")
  except UnicodeDecodeError:
    skips.add("non_utf8")
    return None
  if not text.strip():
    skips.add("empty")
    return None
  return text


def plain_texts(lines, skips: SkipCounter) -> list[bytes]:
  """The usable lines of a batch of raw text lines (the others counted in `skips`)."""
  out = []
  for line in lines:
    if _decode(line, skips) is not None:
      out.append(line)
  return out


def jsonl_texts(lines, skips: SkipCounter) -> list[bytes]:
  """The "text" of the usable lines of a batch of raw jsonl lines (the others counted)."""
  out = []
  for line in lines:
    line = _decode(line, skips)
    if line is None:
      continue
    try:
      record = json.loads(line.lstrip("\ufeff"))  # a UTF-8 byte-order mark opens some files
    except json.JSONDecodeError:
      skips.add("invalid_json")
      continue
    text = record.get("text") if isinstance(record, dict) else None
    if not isinstance(text, str):
      skips.add("missing_text")
    elif not text.strip():
      skips.add("empty")
    else:
      try:
        out.append(text.encode("utf-8"))
      except UnicodeEncodeError:  # a lone surrogate escape such as "\ud800"
        skips.add("non_utf8")
  return out


@functools.lru_cache(maxsize=2)
def pydoc_texts(per_module: bool = False) -> tuple[str, ...]:
  """Module, class and function docstrings of the standard library, longer than 200 characters.

  One document per docstring, or with per_module=True one per module (its docstrings joined by
  blank lines, in source order: long documents that fill whole chunks, as Wikipedia articles do).
  Read with `ast` (nothing is imported or executed), files in sorted order: deterministic
  (data/stdlib_docs.py).
  """
  paths = stdlib_docs.source_paths()
  # Parsing the whole standard library takes seconds; every process start would pay them. The
  # texts are cached on disk under a key made of everything they depend on.
  key = hashlib.sha256(repr((sys.version, per_module, _PYDOC_MIN_CHARS, [
      (str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths])).encode()).hexdigest()
  cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "retromae_jax" / (
      f"pydoc_{key[:24]}.json")
  try:
    return tuple(json.loads(cache.read_text(encoding="utf-8")))
  except (OSError, ValueError):
    pass
  texts = _parse_docstrings(per_module)
  try:
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(texts), encoding="utf-8")
    os.replace(tmp, cache)
  except OSError:  # a read-only home: no cache, same texts
    pass
  return texts


def _parse_docstrings(per_module: bool) -> tuple[str, ...]:
  texts = []
  for _, tree in stdlib_docs.parsed_modules():
    docs = []
    for node in ast.walk(tree):
      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(node)
        if doc and len(doc) > _PYDOC_MIN_CHARS:
          docs.append(doc)
    if per_module and docs:
      texts.append("\n\n".join(docs))
    else:
      texts.extend(docs)
  return tuple(texts)
