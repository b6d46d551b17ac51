"""Reading jsonl files the one way every entry point does: one JSON object per non-blank line,
errors that name file:line, local paths or gs:// (through tf.io.gfile, imported only then)."""

import json
from collections.abc import Iterator


def _open(path: str):
  if "://" in path:
    import tensorflow as tf  # slow to import: only for remote files
    return tf.io.gfile.GFile(path, "r")
  return open(path, encoding="utf-8-sig")  # -sig: tolerate a byte-order mark


def records(path: str) -> Iterator[tuple[int, dict]]:
  """(line number, object) for every non-blank line of `path`."""
  with _open(path) as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
      if not isinstance(record, dict):
        raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
      yield line_no, record
