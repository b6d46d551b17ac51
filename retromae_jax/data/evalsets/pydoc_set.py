"""A small real retrieval benchmark built offline from the Python standard library's docstrings.

  python -m retromae_jax.tools.pydoc_set --out=DIR

Query: the summary of a function's, class's or method's docstring ("Return the number of items
in the queue."). Relevant document (exactly one): the rest of that docstring, titled with the
qualified name and signature (`queue.Queue.qsize()`), as API documentation shows it. The summary
itself never appears in any document, its own or another (queries whose summary does are
dropped), so matching the query string verbatim finds nothing; the model has to connect a
one-line description with the explanation and the name.

The corpus also holds distractors that answer no query: every module docstring, and the whole
docstrings of definitions that make no query (no separate summary line, a summary shared with
other definitions, a summary of fewer than 4 words).

Queries are split by module, so that no module has queries on both sides: train (about 80%) for
fine-tuning, test (about 20%) for evaluation; one corpus serves both. Everything is read with ast
in sorted file order (data/stdlib_docs.py), so one Python version always builds the same set;
other versions build a similar one (pydoc_set.json records which, and the counts).

API:
  build(out_dir) -> dict          writes the BEIR folder (data/evalsets/beir.py), returns the counts
  cached_dir() -> str             built once per process into a temporary folder (tests, demos)
"""

import ast
import functools
import hashlib
import json
import os
import re
import sys
import tempfile


from retromae_jax.data import stdlib_docs
from retromae_jax.data.evalsets import beir

_TEST_SHARE = 5  # one module in five (by hash of its name) goes to the test split
_MIN_SUMMARY_WORDS = 4
_MAX_SUMMARY_WORDS = 40
_MAX_SUMMARY_LINES = 3
_MIN_BODY_CHARS = 80
_MIN_DISTRACTOR_CHARS = 200
_SHINGLE = 4  # words per entry of the index that finds summaries repeated in documents
# Summaries that point elsewhere instead of describing: no document could answer them.
_REFERRING = re.compile(r"^(see |same as|alias (for|of)|deprecated|this (function|method) is "
                        r"deprecated|for internal use|internal use)", re.IGNORECASE)


def _definitions(module: str, tree: ast.Module):
  """(module, qualified name, node) of every documented def/class, in source order."""
  def walk(node, prefix):
    for child in ast.iter_child_nodes(node):
      if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        name = prefix + (child.name,)
        if ast.get_docstring(child):
          yield module, ".".join(name), child
        if isinstance(child, ast.ClassDef):
          yield from walk(child, name)
  yield from walk(tree, ())


def _title(module: str, qualname: str, node) -> str:
  if isinstance(node, ast.ClassDef):
    return f"{module}.{qualname}"
  return f"{module}.{qualname}({ast.unparse(node.args)})"


def _split_summary(doc: str):
  """(summary, body) when the docstring opens with a short paragraph of its own, else None."""
  paragraphs = re.split(r"\n\s*\n", doc.strip(), maxsplit=1)
  if len(paragraphs) < 2:
    return None
  lines = paragraphs[0].splitlines()
  if len(lines) > _MAX_SUMMARY_LINES:
    return None
  summary, body = " ".join(line.strip() for line in lines), paragraphs[1].strip()
  return summary, body


def _words(text: str) -> list[str]:
  return re.findall(r"\w+", text.lower())


def _shingles(words: list[str]):
  return {tuple(words[i:i + _SHINGLE]) for i in range(len(words) - _SHINGLE + 1)}


def _normalized(text: str) -> str:
  return " ".join(_words(text))


def _is_test(module: str) -> bool:
  return int(hashlib.sha1(module.encode()).hexdigest(), 16) % _TEST_SHARE == 0


def collect():
  """(corpus {doc_id: (title, text)}, queries {qid: text}, qrels {split: qrels}), in memory."""
  candidates = []  # (doc_id, module, title, summary, body)
  distractors = {}
  seen_bodies = set()
  for module, tree in stdlib_docs.parsed_modules():
    doc = ast.get_docstring(tree)
    if doc and len(doc) >= _MIN_DISTRACTOR_CHARS:
      distractors[module] = (module, doc)
    for _, qualname, node in _definitions(module, tree):
      doc_id = f"{module}:{qualname}"
      doc = ast.get_docstring(node)
      parts = _split_summary(doc)
      title = _title(module, qualname, node)
      if parts and len(parts[1]) >= _MIN_BODY_CHARS and doc_id not in seen_bodies:
        if parts[1] not in seen_bodies:  # a docstring copied into another module: keep the first
          seen_bodies.update((doc_id, parts[1]))
          candidates.append((doc_id, module, title, *parts))
      elif len(doc) >= _MIN_DISTRACTOR_CHARS and doc_id not in distractors:
        distractors[doc_id] = (title, doc)

  # Which summaries can be queries: unambiguous (one definition has it), descriptive, and found
  # in no document (the own body included) as a run of words. Candidates for "found" come from
  # an index of _SHINGLE-word runs; the normalized texts then confirm.
  counts = {}
  for c in candidates:
    counts[_normalized(c[3])] = counts.get(_normalized(c[3]), 0) + 1
  # Candidates' texts include their summaries (a candidate without a query keeps its summary);
  # a summary's own candidate is then checked without it.
  texts = [_normalized(f"{title} {summary} {body}") for _, _, title, summary, body in candidates]
  texts += [_normalized(title + " " + text) for title, text in distractors.values()]
  index = {}
  for i, text in enumerate(texts):
    for shingle in _shingles(text.split()):
      index.setdefault(shingle, set()).add(i)

  def found_verbatim(own: int, title: str, summary: str, body: str) -> bool:
    words = _words(summary)
    phrase = f" {' '.join(words)} "
    if phrase in f" {_normalized(title + ' ' + body)} ":
      return True
    if len(words) < _SHINGLE:
      return any(phrase in f" {text} " for i, text in enumerate(texts) if i != own)
    rarest = min((index.get(s, set()) for s in _shingles(words)), key=len)
    return any(phrase in f" {texts[i]} " for i in rarest if i != own)

  corpus, queries, qrels = {}, {}, {"train": {}, "test": {}}
  for own, (doc_id, module, title, summary, body) in enumerate(candidates):
    corpus[doc_id] = (title, body)
    usable = (counts[_normalized(summary)] == 1
              and _MIN_SUMMARY_WORDS <= len(summary.split()) <= _MAX_SUMMARY_WORDS
              and not _REFERRING.match(summary)
              and not found_verbatim(own, title, summary, body))
    if usable:
      queries[doc_id] = summary
      qrels["test" if _is_test(module) else "train"][doc_id] = {doc_id: 1}
    else:
      corpus[doc_id] = (title, summary + "\n\n" + body)  # no query: the whole docstring
  for doc_id, value in distractors.items():
    corpus.setdefault(doc_id, value)
  return corpus, queries, qrels


def build(out_dir: str) -> dict:
  """Writes the BEIR folder and pydoc_set.json (Python version, counts); returns the counts."""
  corpus, queries, qrels = collect()
  beir.write(out_dir, corpus, queries, qrels)
  info = {"python": sys.version.split()[0], "num_docs": len(corpus),
          "num_train_queries": len(qrels["train"]), "num_test_queries": len(qrels["test"])}
  with open(os.path.join(out_dir, "pydoc_set.json"), "w", encoding="utf-8") as f:
    json.dump(info, f, indent=1)
  return info


@functools.lru_cache(maxsize=None)
def cached_dir() -> str:
  """The set, built on first use into a temporary folder that lives as long as the process."""
  out_dir = tempfile.mkdtemp(prefix="pydoc_set_")
  build(out_dir)
  return out_dir
