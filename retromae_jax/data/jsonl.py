"""Reading jsonl files the one way every entry point does: one JSON object per non-blank line,
errors that name file:line, local paths or gs:// (through tf.io.gfile, imported only then)."""

import json
from collections.abc import Iterator


def _open(path: str):
  """Bytes, decoded line by line (a bad byte is then named by its line)."""
  if "://" in path:
    import tensorflow as tf  # slow to import: only for remote files
    return tf.io.gfile.GFile(path, "rb")
  try:
    return open(path, "rb")
  except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
    raise ValueError(f"{path}: cannot be read ({e.strerror}); expected a jsonl file") from None


def records(path: str) -> Iterator[tuple[int, dict]]:
  """(line number, object) for every non-blank line of `path`."""
  with _open(path) as f:
    for line_no, raw in enumerate(f, 1):
      try:  # -sig: tolerate a byte-order mark
        line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
      except UnicodeDecodeError as e:
        raise ValueError(f"{path}:{line_no}: not UTF-8 (byte {raw[e.start:e.start + 1]!r} at "
                         f"column {e.start + 1}); expected UTF-8 text") from None
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
      if not isinstance(record, dict):
        raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
      yield line_no, record
