"""BM25 on a BEIR folder (default: the pydoc set's test split), scored with our metrics: the
lexical baseline every dense retriever is compared with.

bm25s with Lucene's scoring and Elasticsearch's defaults (k1=1.2, b=0.75), English stop words
and the Snowball English stemmer: the configuration behind BEIR's published BM25 column, minus
Elasticsearch itself. Documents that share no term with a query (score 0) are not retrieved.

  python bench/bm25_baseline.py [--beir_dir=DIR] [--split=test] [--top_k=100]

Needs `bm25s` and `PyStemmer` (bench-only; requirements-test.txt).
"""

import argparse
import json
import tempfile
import time

import bm25s
import numpy as np
import Stemmer

from retromae_jax.data.evalsets import beir
from retromae_jax.evaluators import metrics
from retromae_jax.data.evalsets import pydoc_set


def search(data, k1: float = 1.2, b: float = 0.75, top_k: int = 100) -> dict:
  """The BM25 run over a BeirData: {query id: {doc id: score}}, zero-score documents left out."""
  stemmer = Stemmer.Stemmer("english")
  doc_ids = list(data.corpus)
  retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
  retriever.index(bm25s.tokenize(list(data.corpus.values()), stopwords="en", stemmer=stemmer,
                                 show_progress=False), show_progress=False)
  query_tokens = bm25s.tokenize(list(data.queries.values()), stopwords="en", stemmer=stemmer,
                                show_progress=False)
  indices, scores = retriever.retrieve(query_tokens, k=min(top_k, len(doc_ids)),
                                       show_progress=False)
  run = {}
  for qid, idx, sc in zip(data.queries, np.asarray(indices), np.asarray(scores, np.float64)):
    run[qid] = {doc_ids[i]: s for i, s in zip(idx.tolist(), sc.tolist()) if s > 0}
  return run


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--beir_dir", default=None, help="default: build the pydoc set")
  parser.add_argument("--split", default="test")
  parser.add_argument("--top_k", type=int, default=100)
  parser.add_argument("--k1", type=float, default=1.2)
  parser.add_argument("--b", type=float, default=0.75)
  args = parser.parse_args()
  beir_dir = args.beir_dir or tempfile.mkdtemp(prefix="pydoc_set_")
  if args.beir_dir is None:
    pydoc_set.build(beir_dir)
  data = beir.load(beir_dir, args.split)

  start = time.perf_counter()
  run = search(data, args.k1, args.b, args.top_k)
  seconds = time.perf_counter() - start
  result = metrics.evaluate(data.qrels, run, ["ndcg@10", "mrr@10", "recall@10", "recall@100",
                                              "map@100", "p@10"])
  result.update(num_docs=len(data.corpus), index_and_search_seconds=round(seconds, 2),
                beir_dir=args.beir_dir or "pydoc_set (built)", split=args.split)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
