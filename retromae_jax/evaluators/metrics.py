"""Ranking metrics with trec_eval's exact semantics, so our numbers are the numbers BEIR and MS
MARCO papers report (they run trec_eval through pytrec_eval), without a C extension at run time.

Measures are named `ndcg@k`, `mrr@k`, `recall@k`, `map@k`, `p@k`; trec_eval's counterparts are
ndcg_cut_k, recip_rank on the run cut to its first k, recall_k, map_cut_k and P_k.

What trec_eval does, and so what we do:
  - A run is ranked by score descending; equal scores are ordered by doc id DESCENDING (string
    order), whatever order the run lists them in.
  - A judged document is relevant when its relevance is >= 1; relevance 0 or below counts as
    non-relevant, and is no gain for nDCG. nDCG's gain is the relevance itself (linear), its
    discount 1 / log2(rank + 1), its ideal ranking every judged document sorted by relevance.
  - recall and MAP divide by all relevant documents of the query, retrieved or not; P@k divides
    by k even when fewer were retrieved. A query without relevant documents scores 0 everywhere.
  - Queries are scored when they are in both the run (an empty run counts) and the qrels with
    at least one judgment, and means are taken over those.

API:
  per_query(qrels, run, measures) -> (query_ids, {measure: float64 [Q]})
      qrels {qid: {doc_id: int}}, run {qid: {doc_id: score}}
  evaluate(qrels, run, measures) -> {measure: mean, ..., "num_queries": Q}
  run_from_topk(query_ids, doc_ids, indices, scores) -> run dict for a [Q, K] search result
"""

import re
from typing import Mapping, Sequence

import numpy as np

DEFAULT_MEASURES = ("ndcg@10", "mrr@10", "recall@10", "recall@100", "map@100", "p@10")
_MEASURE = re.compile(r"^(ndcg|mrr|recall|map|p)@([1-9][0-9]*)$")


def parse_measure(name: str) -> tuple[str, int]:
  match = _MEASURE.match(name)
  if not match:
    raise ValueError(f"measure {name!r}: expected ndcg@k, mrr@k, recall@k, map@k or p@k")
  return match.group(1), int(match.group(2))


def _ranked_relevance(qrels, run, query_ids, depth):
  """[Q, depth] relevance of each query's documents in trec_eval's order, 0 past its run.

  Vectorised over all (query, document) pairs: one lexsort ranks every query at once, and
  relevance is looked up by searching sorted integer keys, not by a dict lookup per pair.
  """
  counts = np.array([len(run[q]) for q in query_ids], np.int64)
  rows = np.repeat(np.arange(len(query_ids)), counts)
  docs = [d for q in query_ids for d in run[q]]
  scores = np.fromiter((s for q in query_ids for s in run[q].values()), np.float64, len(docs))
  judged = [(row, d, rel) for row, q in enumerate(query_ids) for d, rel in qrels[q].items()]
  # One id space for run and qrels documents; np.unique sorts strings in code-point order, which
  # is the byte order of trec_eval's strcmp on UTF-8.
  names, codes = np.unique(np.array(docs + [d for _, d, _ in judged], dtype=object),
                           return_inverse=True)
  run_codes, judged_codes = codes[:len(docs)], codes[len(docs):]
  order = np.lexsort((-run_codes, -scores, rows))  # last key first: row, score desc, id desc
  rank = np.arange(len(docs)) - np.repeat(np.cumsum(counts) - counts, counts)  # within row
  keep = rank < depth
  pair_key = rows[order] * len(names) + run_codes[order]
  judged_key = np.array([row for row, _, _ in judged], np.int64) * len(names) + judged_codes
  judged_rel = np.array([rel for _, _, rel in judged], np.int64)
  sort = np.argsort(judged_key)
  judged_key, judged_rel = judged_key[sort], judged_rel[sort]
  at = np.minimum(np.searchsorted(judged_key, pair_key), max(len(judged_key) - 1, 0))
  found = (judged_key[at] == pair_key) if len(judged_key) else np.zeros(len(pair_key), bool)
  rel = np.where(found, judged_rel[at] if len(judged_key) else 0, 0)
  out = np.zeros((len(query_ids), depth), np.int64)
  out[rows[keep], rank[keep]] = rel[keep]
  return out


def _ideal_gains(qrels, query_ids, depth):
  """[Q, depth] positive relevance values of each query's judgments, sorted descending."""
  out = np.zeros((len(query_ids), depth), np.int64)
  for row, q in enumerate(query_ids):
    gains = sorted((r for r in qrels[q].values() if r > 0), reverse=True)[:depth]
    out[row, :len(gains)] = gains
  return out


def per_query(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]],
              measures: Sequence[str] = DEFAULT_MEASURES):
  """(query ids scored, {measure: float64 [Q]}), queries in the order of the qrels."""
  parsed = [parse_measure(m) for m in measures]
  query_ids = [q for q in qrels if q in run and qrels[q]]
  depth = max([k for _, k in parsed], default=1)
  rel = _ranked_relevance(qrels, run, query_ids, depth)
  hit = rel > 0
  num_rel = np.array([sum(r > 0 for r in qrels[q].values()) for q in query_ids], np.float64)
  ranks = np.arange(1, depth + 1)
  discount = 1.0 / np.log2(ranks + 1.0)
  cum_hits = np.cumsum(hit, axis=1)
  safe_num_rel = np.maximum(num_rel, 1.0)  # a query without relevant documents scores 0
  ideal = None
  out = {}
  for name, (kind, k) in zip(measures, parsed):
    if kind == "ndcg":
      ideal = _ideal_gains(qrels, query_ids, depth) if ideal is None else ideal
      dcg = (np.maximum(rel[:, :k], 0) * discount[:k]).sum(1)
      idcg = (ideal[:, :k] * discount[:k]).sum(1)
      out[name] = np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1.0), 0.0)
    elif kind == "mrr":
      first = np.argmax(hit[:, :k], axis=1)
      out[name] = np.where(hit[:, :k].any(1), 1.0 / (first + 1.0), 0.0)
    elif kind == "recall":
      out[name] = cum_hits[:, k - 1] / safe_num_rel
    elif kind == "map":
      precision_at_hits = np.where(hit[:, :k], cum_hits[:, :k] / ranks[:k], 0.0)
      out[name] = precision_at_hits.sum(1) / safe_num_rel
    else:  # p
      out[name] = cum_hits[:, k - 1] / k
  return query_ids, out


def evaluate(qrels, run, measures: Sequence[str] = DEFAULT_MEASURES) -> dict:
  """Means over the queries in both qrels and run, and how many there were."""
  query_ids, scores = per_query(qrels, run, measures)
  result = {m: float(v.mean()) if len(v) else 0.0 for m, v in scores.items()}
  result["num_queries"] = len(query_ids)
  return result


def run_from_topk(query_ids: Sequence[str], doc_ids: Sequence[str], indices: np.ndarray,
                  scores: np.ndarray) -> dict[str, dict[str, float]]:
  """{qid: {doc_id: score}} from a search's [Q, K] corpus indices and scores (-1 = no hit)."""
  doc_ids = np.asarray(doc_ids, dtype=object)
  run = {}
  for q, idx, sc in zip(query_ids, np.asarray(indices), np.asarray(scores, np.float64)):
    valid = idx >= 0
    run[q] = dict(zip(doc_ids[idx[valid]].tolist(), sc[valid].tolist()))
  return run
