"""BEIR folder reading (formats as the beir package writes them, errors that name file:line and
field) and the pydoc retrieval set built from the standard library."""

import json
import os
import re

import pytest

from retromae_jax.data.evalsets import beir
from retromae_jax.data.evalsets import pydoc_set


def _write(tmp_path, corpus_lines, query_lines, qrels_text, split="test"):
  (tmp_path / "qrels").mkdir(exist_ok=True)
  (tmp_path / "corpus.jsonl").write_text("\n".join(corpus_lines) + "\n", encoding="utf-8")
  (tmp_path / "queries.jsonl").write_text("\n".join(query_lines) + "\n", encoding="utf-8")
  (tmp_path / "qrels" / f"{split}.tsv").write_text(qrels_text, encoding="utf-8")
  return str(tmp_path)


GOOD_CORPUS = ['{"_id": "d1", "title": "Paris", "text": "is the capital of France."}',
               '{"_id": "d2", "title": "", "text": "  No title here. "}',
               '{"_id": "d3", "text": "No title field.", "metadata": {}}']
GOOD_QUERIES = ['{"_id": "q1", "text": "capital of France"}', '{"_id": "q2", "text": "unjudged"}']
GOOD_QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0\n"


def test_load_joins_title_and_keeps_judged_queries(tmp_path):
  data = beir.load(_write(tmp_path, GOOD_CORPUS, GOOD_QUERIES, GOOD_QRELS), "test")
  # BEIR / sentence-transformers: (title + " " + text).strip()
  assert data.corpus == {"d1": "Paris is the capital of France.", "d2": "No title here.",
                         "d3": "No title field."}
  assert data.queries == {"q1": "capital of France"}  # only the queries judged in the split
  assert data.qrels == {"q1": {"d1": 1, "d2": 0}}


def test_write_then_load_round_trips(tmp_path):
  beir.write(str(tmp_path), {"a": ("T", "x y"), "b": "z"}, {"q": "query"},
             {"train": {"q": {"a": 2}}, "test": {"q": {"b": 1}}})
  assert beir.load_corpus(str(tmp_path)) == {"a": "T x y", "b": "z"}
  assert beir.load_qrels(str(tmp_path), "train") == {"q": {"a": 2}}
  assert beir.load(str(tmp_path), "test").qrels == {"q": {"b": 1}}


@pytest.mark.parametrize("corpus, qrels, message", [
    (GOOD_CORPUS + ["{not json"], GOOD_QRELS, r"corpus.jsonl:4: not valid JSON"),
    (GOOD_CORPUS + ['{"_id": "d4"}'], GOOD_QRELS, r"corpus.jsonl:4: field 'text' must be a str"),
    (GOOD_CORPUS + ['{"_id": "d5", "text": "x", "title": 3}'], GOOD_QRELS,
     r"corpus.jsonl:4: field 'title' must be a string, got int"),
    (GOOD_CORPUS + ['{"text": "x"}'], GOOD_QRELS, r"corpus.jsonl:4: field '_id' must be"),
    (GOOD_CORPUS + ['{"_id": "d1", "text": "x"}'], GOOD_QRELS,
     r"corpus.jsonl:4: duplicate _id 'd1' \(first on line 1\)"),
    (GOOD_CORPUS + ['["_id", "text"]'], GOOD_QRELS, r"corpus.jsonl:4: expected a JSON object"),
    (GOOD_CORPUS, GOOD_QRELS + "q1\td3\thigh\n", r"test.tsv:4: field 'score' must be an integer"),
    (GOOD_CORPUS, GOOD_QRELS + "q1\td3\n", r"test.tsv:4: expected 3 tab-separated fields"),
    (GOOD_CORPUS, GOOD_QRELS + "q1\td1\t2\n", r"test.tsv:4: \('q1', 'd1'\) is judged twice"),
    (GOOD_CORPUS, GOOD_QRELS + "q9\td1\t1\n", r"test.tsv: 1 of 2 query ids are not in queries.jsonl"),
])
def test_bad_input_names_file_line_and_field(tmp_path, corpus, qrels, message):
  beir_dir = _write(tmp_path, corpus, GOOD_QUERIES, qrels)
  with pytest.raises(ValueError, match=message):
    beir.load(beir_dir, "test")


def test_missing_split_lists_the_splits_present(tmp_path):
  beir_dir = _write(tmp_path, GOOD_CORPUS, GOOD_QUERIES, GOOD_QRELS)
  with pytest.raises(ValueError, match=r"dev.tsv: no such file \(splits present: \['test'\]\)"):
    beir.load(beir_dir, "dev")
  with pytest.raises(ValueError, match="corpus.jsonl: no such file"):
    beir.load_corpus(str(tmp_path / "qrels"))


def test_qrels_header_is_optional(tmp_path):
  beir_dir = _write(tmp_path, GOOD_CORPUS, GOOD_QUERIES, "q1\td1\t1\n")
  assert beir.load_qrels(beir_dir, "test") == {"q1": {"d1": 1}}


# ------------------------------------------------------------------------------------ pydoc set


def _words(text):
  return " " + " ".join(re.findall(r"\w+", text.lower())) + " "


def test_pydoc_set_is_a_sound_retrieval_set():
  beir_dir = pydoc_set.cached_dir()
  corpus = beir.load_corpus(beir_dir)
  with open(os.path.join(beir_dir, "pydoc_set.json"), encoding="utf-8") as f:
    info = json.load(f)
  train, test = beir.load(beir_dir, "train"), beir.load(beir_dir, "test")
  assert info["num_docs"] == len(corpus) >= 2000
  assert info["num_train_queries"] == len(train.queries) >= 1000
  assert info["num_test_queries"] == len(test.queries) >= 200
  assert not set(train.queries) & set(test.queries)
  module = lambda qid: qid.split(":")[0]  # noqa: E731
  assert not {module(q) for q in train.queries} & {module(q) for q in test.queries}
  # One relevant document per query, in the corpus, and distractors that answer nothing.
  judged = set()
  for data in (train, test):
    for qid, docs in data.qrels.items():
      assert list(docs.values()) == [1] and set(docs) <= set(corpus)
      judged |= set(docs)
  assert len(corpus) - len(judged) >= 500
  # No summary is found verbatim in any document (checked here by brute force).
  all_text = "\0".join(_words(t) for t in corpus.values())  # \0: no match across documents
  queries = {**train.queries, **test.queries}
  assert len(set(map(_words, queries.values()))) == len(queries)
  leaked = [q for q, text in queries.items() if _words(text) in all_text]
  assert not leaked, leaked[:5]


def test_pydoc_set_is_deterministic(tmp_path):
  info = pydoc_set.build(str(tmp_path))
  for name in ("corpus.jsonl", "queries.jsonl", "qrels/train.tsv", "qrels/test.tsv"):
    with open(os.path.join(pydoc_set.cached_dir(), name), "rb") as a, \
        open(tmp_path / name, "rb") as b:
      assert a.read() == b.read(), name
  assert info["num_docs"] > 0
