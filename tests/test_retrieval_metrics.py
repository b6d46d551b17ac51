"""Retrieval metrics against trec_eval (pytrec_eval, the C code BEIR and MS MARCO numbers come
from) and exact search against a brute-force numpy ranking, ties included on both sides."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from retromae_jax.evaluators import metrics
from retromae_jax.evaluators import search

pytrec_eval = pytest.importorskip("pytrec_eval")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Ours -> trec_eval's name; mrr@k is recip_rank on the run cut to its first k (see below).
TREC_NAMES = {"ndcg@1": "ndcg_cut_1", "ndcg@3": "ndcg_cut_3", "ndcg@10": "ndcg_cut_10",
              "ndcg@100": "ndcg_cut_100", "recall@10": "recall_10", "recall@100": "recall_100",
              "map@10": "map_cut_10", "map@100": "map_cut_100", "p@5": "P_5", "p@10": "P_10"}


def _random_case(rng, num_queries=300, num_docs=400):
  """Graded (-1..3) qrels and runs with many tied scores; some queries only in one of them,
  some with no relevant document, some with an empty run."""
  # Ids of unequal length and case, so that string order differs from numeric order.
  docs = [f"{'D' if i % 3 else 'd'}{i}" for i in range(num_docs)]
  qrels, run = {}, {}
  for q in range(num_queries):
    qid = f"q{q}"
    if rng.random() < 0.9:
      judged = rng.choice(num_docs, rng.integers(1, 12), replace=False)
      qrels[qid] = {docs[i]: int(rng.integers(-1, 4)) for i in judged}
    if rng.random() < 0.9:
      retrieved = rng.choice(num_docs, rng.integers(0, 160), replace=False)
      run[qid] = {docs[i]: float(rng.integers(0, 6)) / 4 for i in retrieved}  # few values: ties
  return qrels, run


def _trec_order(scores: dict) -> list:
  """trec_eval's ranking: score descending, ties by doc id descending."""
  by_id = sorted(scores.items(), reverse=True)
  return sorted(by_id, key=lambda item: -item[1])  # stable: keeps the id order within ties


def _cut(run, k):
  return {q: dict(_trec_order(scores)[:k]) for q, scores in run.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_trec_eval(seed):
  qrels, run = _random_case(np.random.default_rng(seed))
  qrels["q0"], run["q0"] = {}, {"D1": 1.0}  # no judgments at all: trec_eval skips the query
  reference = pytrec_eval.RelevanceEvaluator(qrels, set(TREC_NAMES.values())).evaluate(run)
  reference_rr = {k: pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(_cut(run, k))
                  for k in (1, 10)}
  measures = list(TREC_NAMES) + ["mrr@1", "mrr@10"]
  query_ids, ours = metrics.per_query(qrels, run, measures)

  assert sorted(query_ids) == sorted(reference)  # queries in both qrels and run
  for name, trec_name in TREC_NAMES.items():
    expected = np.array([reference[q][trec_name] for q in query_ids])
    np.testing.assert_allclose(ours[name], expected, rtol=0, atol=1e-6, err_msg=name)
  for k in (1, 10):
    expected = np.array([reference_rr[k][q]["recip_rank"] for q in query_ids])
    np.testing.assert_allclose(ours[f"mrr@{k}"], expected, rtol=0, atol=1e-6)

  means = metrics.evaluate(qrels, run, ["ndcg@10", "map@100"])
  assert means["num_queries"] == len(reference)
  assert means["ndcg@10"] == pytest.approx(
      np.mean([r["ndcg_cut_10"] for r in reference.values()]), abs=1e-9)
  assert means["map@100"] == pytest.approx(
      np.mean([r["map_cut_100"] for r in reference.values()]), abs=1e-9)


def test_ties_are_broken_by_doc_id_descending():
  # All three documents tie; trec_eval ranks them c, b, a: the relevant `a` is third.
  qrels = {"q": {"a": 1}}
  run = {"q": {"a": 0.5, "b": 0.5, "c": 0.5}}
  _, ours = metrics.per_query(qrels, run, ["mrr@10", "mrr@2", "ndcg@10"])
  assert ours["mrr@10"][0] == pytest.approx(1 / 3)
  assert ours["mrr@2"][0] == 0.0
  assert ours["ndcg@10"][0] == pytest.approx(1 / np.log2(4))


def test_run_from_topk_and_bad_measure():
  run = metrics.run_from_topk(["q1", "q2"], ["a", "b", "c"], np.array([[2, 0], [1, -1]]),
                              np.array([[0.9, 0.1], [0.5, 0.0]], np.float32))
  assert run == {"q1": {"c": pytest.approx(0.9), "a": pytest.approx(0.1)},
                 "q2": {"b": pytest.approx(0.5)}}
  with pytest.raises(ValueError, match="ndcg@k"):
    metrics.parse_measure("ndcg10")


# --------------------------------------------------------------------------------------- search


def _brute_force(queries, corpus, k, similarity="dot"):
  if similarity == "cos":
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    corpus = corpus / np.linalg.norm(corpus, axis=1, keepdims=True)
  scores = queries.astype(np.float64) @ corpus.astype(np.float64).T
  order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # ties: lower index first
  return np.take_along_axis(scores, order, axis=1), order


# (queries, docs, dim, k, block_size, query_batch): blocks that do not divide the corpus, k above
# the block size and above the corpus size, a query batch that does not divide the queries.
SEARCH_CASES = [(37, 1000, 8, 10, 64, 16), (5, 13, 4, 20, 4, 1024), (50, 3001, 16, 100, 256, 32),
                (3, 7, 4, 3, 8192, 2)]


def _check_search(similarity):
  rng = np.random.default_rng(0)
  for num_q, num_docs, dim, k, block, batch in SEARCH_CASES:
    # Small integers: every dot product is exact in float32, and many are equal.
    queries = rng.integers(-2, 3, (num_q, dim)).astype(np.float32)
    corpus = rng.integers(-2, 3, (num_docs, dim)).astype(np.float32)
    queries[np.abs(queries).sum(1) == 0, 0] = 1  # cosine needs nonzero rows
    corpus[np.abs(corpus).sum(1) == 0, 0] = 1
    scores, indices = search.search(queries, corpus, k, similarity=similarity,
                                    block_size=block, query_batch=batch)
    ref_scores, ref_indices = _brute_force(queries, corpus, k, similarity)
    if similarity == "dot":  # exact: the rankings must be identical, ties and all
      np.testing.assert_array_equal(indices, ref_indices)
    else:  # normalised scores round differently: what was found must score the top k
      all_scores = _brute_force(queries, corpus, num_docs, similarity)
      full = np.zeros_like(all_scores[0])
      np.put_along_axis(full, all_scores[1], all_scores[0], axis=1)
      np.testing.assert_allclose(np.take_along_axis(full, indices, 1), ref_scores, atol=1e-5)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_search_equals_brute_force_with_ties():
  _check_search("dot")
  _check_search("cos")


def test_search_on_8_devices_equals_brute_force():
  code = textwrap.dedent("""
      import jax, sys
      sys.path.insert(0, "tests")
      import test_retrieval_metrics as t
      assert jax.device_count() == 8, jax.device_count()
      t._check_search("dot")
      print("ok")
      """)
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="8")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert proc.stdout.strip().splitlines()[-1] == "ok"
