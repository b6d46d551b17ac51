"""BEIR folders: the format every public retrieval benchmark ships in, read without the `beir`
package (it pulls in faiss, elasticsearch and pytrec_eval just to parse three files).

  DIR/corpus.jsonl        {"_id": str, "title": str (optional), "text": str} per line
  DIR/queries.jsonl       {"_id": str, "text": str} per line
  DIR/qrels/{split}.tsv   query-id <TAB> corpus-id <TAB> score, after a header line

API:
  load_corpus(dir) -> {doc_id: text}      in file order; text = title + " " + text (stripped)
                                          when a title exists, as BEIR and sentence-transformers
                                          embed documents
  load_queries(dir) -> {query_id: text}   in file order
  load_qrels(dir, split) -> {query_id: {doc_id: relevance}}   relevance 0 = judged non-relevant
  load(dir, split, allow_missing_ids=False) -> BeirData(corpus, queries, qrels)   queries kept
                                          only if judged in `split`; qrels ids missing from the
                                          folder are an error unless allowed
  check_ids(dir, split, allow_missing_ids=False)   the same id check, reading ids only
  write(dir, corpus, queries, qrels_by_split)            the inverse, for sets we build

Ids are strings (integer ids in hand-made files are accepted and turned into strings, since the
qrels file can only hold strings). Bad input fails at once with `file:line: what is wrong`.
"""

import dataclasses
import json
import os
from typing import Mapping

from absl import logging

from retromae_jax.data import jsonl

QRELS_HEADER = ("query-id", "corpus-id", "score")


@dataclasses.dataclass(frozen=True)
class BeirData:
  corpus: dict[str, str]
  queries: dict[str, str]
  qrels: dict[str, dict[str, int]]


def _records(path: str):
  """(line number, dict) for every non-blank line of a jsonl file."""
  if not os.path.isfile(path):
    raise ValueError(f"{path}: no such file (a BEIR folder has corpus.jsonl, queries.jsonl and "
                     "qrels/{split}.tsv)")
  yield from jsonl.records(path)


def _field(path, line_no, record, name, types=(str,), required=True):
  value = record.get(name)
  if value is None and not required:
    return None
  if isinstance(value, bool) or not isinstance(value, types):
    what = "nothing (missing)" if name not in record else type(value).__name__
    kind = "a string or an integer" if int in types else "a string"
    raise ValueError(f"{path}:{line_no}: field {name!r} must be {kind}, got {what}")
  return str(value)


def _load_texts(path: str, with_title: bool) -> dict[str, str]:
  texts, first_line = {}, {}
  for line_no, record in _records(path):
    key = _field(path, line_no, record, "_id", (str, int))
    if key in texts:
      raise ValueError(f"{path}:{line_no}: duplicate _id {key!r} (first on line {first_line[key]})")
    text = _field(path, line_no, record, "text")
    title = _field(path, line_no, record, "title", required=False) if with_title else None
    texts[key] = (title + " " + text).strip() if title is not None else text.strip()
    first_line[key] = line_no
  return texts


def load_corpus(beir_dir: str) -> dict[str, str]:
  return _load_texts(os.path.join(beir_dir, "corpus.jsonl"), with_title=True)


def load_queries(beir_dir: str) -> dict[str, str]:
  return _load_texts(os.path.join(beir_dir, "queries.jsonl"), with_title=False)


def qrels_path(beir_dir: str, split: str) -> str:
  return os.path.join(beir_dir, "qrels", f"{split}.tsv")


def load_qrels(beir_dir: str, split: str) -> dict[str, dict[str, int]]:
  """{query_id: {doc_id: relevance}}; a repeated (query, doc) pair is an error, not a silent max."""
  path = qrels_path(beir_dir, split)
  if not os.path.isfile(path):
    present = sorted(n[:-4] for n in os.listdir(os.path.dirname(path)) if n.endswith(".tsv")) \
        if os.path.isdir(os.path.dirname(path)) else []
    raise ValueError(f"{path}: no such file (splits present: {present or 'none'})")
  qrels: dict[str, dict[str, int]] = {}
  with open(path, encoding="utf-8-sig") as f:
    for line_no, line in enumerate(f, 1):
      fields = tuple(x.strip() for x in line.rstrip("\r\n").split("\t"))
      if line_no == 1 and fields == QRELS_HEADER:
        continue
      if fields == ("",):
        continue
      if len(fields) != 3:
        raise ValueError(f"{path}:{line_no}: expected 3 tab-separated fields "
                         f"(query-id, corpus-id, score), got {len(fields)}")
      qid, doc_id, score = fields
      try:
        relevance = int(score)
      except ValueError:
        raise ValueError(f"{path}:{line_no}: field 'score' must be an integer, got "
                         f"{score!r}") from None
      if not qid or not doc_id:
        raise ValueError(f"{path}:{line_no}: empty {'query-id' if not qid else 'corpus-id'}")
      judged = qrels.setdefault(qid, {})
      if doc_id in judged:
        raise ValueError(f"{path}:{line_no}: ({qid!r}, {doc_id!r}) is judged twice")
      judged[doc_id] = relevance
  return qrels


def load(beir_dir: str, split: str = "test", allow_missing_ids: bool = False) -> BeirData:
  """One split, as BEIR's GenericDataLoader returns it: only the queries judged in that split.

  Qrels naming a query or a document that is not in the folder are an error (every id
  mismatched would otherwise score 0 and look like a bad model), unless `allow_missing_ids`:
  then the counts are logged, queries without text are dropped, and judged documents that are
  missing stay in the qrels (never retrieved: they count as misses, as in BEIR)."""
  qrels = load_qrels(beir_dir, split)
  all_queries = load_queries(beir_dir)
  corpus = load_corpus(beir_dir)
  missing_queries = check_qrels_ids(qrels, all_queries, corpus, qrels_path(beir_dir, split),
                                    allow_missing_ids)
  qrels = {q: judged for q, judged in qrels.items() if q not in missing_queries}
  queries = {q: all_queries[q] for q in qrels}
  return BeirData(corpus, queries, qrels)


def check_qrels_ids(qrels, query_ids, doc_ids, where: str, allow_missing_ids: bool) -> set[str]:
  """The query ids of `qrels` absent from `query_ids`; raises ValueError (counts and first
  examples of missing query and document ids) when any id is missing, unless allowed."""
  missing_queries = {q for q in qrels if q not in query_ids}
  judged_docs = {d for judged in qrels.values() for d in judged}
  missing_docs = sorted(d for d in judged_docs if d not in doc_ids)
  if not missing_queries and not missing_docs:
    return missing_queries
  what = (f"{len(missing_queries)} of {len(qrels)} query ids are not in queries.jsonl"
          + (f" (first: {sorted(missing_queries)[0]!r})" if missing_queries else "")
          + f", {len(missing_docs)} of {len(judged_docs)} judged document ids are not in "
          "corpus.jsonl" + (f" (first: {missing_docs[0]!r})" if missing_docs else ""))
  if not allow_missing_ids:
    raise ValueError(f"{where}: {what}; expected ids that match the folder's files (or allow "
                     "them: eval.allow_missing_ids / --allow_missing_ids)")
  logging.warning("%s: %s (allowed: those queries are dropped, those documents count as misses)",
                  where, what)
  return missing_queries


def check_ids(beir_dir: str, split: str, allow_missing_ids: bool = False) -> None:
  """check_qrels_ids for a folder, reading only the ids of its corpus and queries (start-up)."""
  ids = lambda name: {str(r.get("_id")) for _, r in _records(os.path.join(beir_dir, name))}
  check_qrels_ids(load_qrels(beir_dir, split), ids("queries.jsonl"), ids("corpus.jsonl"),
                  qrels_path(beir_dir, split), allow_missing_ids)


def write(beir_dir: str, corpus: Mapping[str, str] | Mapping[str, tuple[str, str]],
          queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, Mapping[str, int]]]):
  """Writes a BEIR folder. corpus values are text or (title, text); qrels maps split -> qrels."""
  os.makedirs(os.path.join(beir_dir, "qrels"), exist_ok=True)
  with open(os.path.join(beir_dir, "corpus.jsonl"), "w", encoding="utf-8") as f:
    for doc_id, value in corpus.items():
      title, text = value if isinstance(value, tuple) else ("", value)
      f.write(json.dumps({"_id": doc_id, "title": title, "text": text}, ensure_ascii=False) + "\n")
  with open(os.path.join(beir_dir, "queries.jsonl"), "w", encoding="utf-8") as f:
    for qid, text in queries.items():
      f.write(json.dumps({"_id": qid, "text": text}, ensure_ascii=False) + "\n")
  for split, judged in qrels.items():
    with open(qrels_path(beir_dir, split), "w", encoding="utf-8") as f:
      f.write("\t".join(QRELS_HEADER) + "\n")
      for qid, docs in judged.items():
        for doc_id, relevance in docs.items():
          f.write(f"{qid}\t{doc_id}\t{relevance}\n")
