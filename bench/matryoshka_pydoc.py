"""Issue 22's Matryoshka benchmark, the scoring half: nDCG@10 of fine-tuned encoders at several
vector sizes on the pydoc test split, with per-query paired bootstrap intervals.

  python bench/matryoshka_pydoc.py --beir_dir=DIR --runs=mrl:WORKDIR,plain:WORKDIR
      [--start=HF_DIR] [--dims=384,256,128,64] [--baseline=plain] [--out=FILE.json]

The runs are `python -m retromae_jax.main --config=configs/finetune.py:minilm` workdirs (with
and without --config.loss.matryoshka_dims; bench/RESULTS.md has the commands). Each encoder
(and --start, zero-shot) embeds the corpus and the test queries once (mean pooling, cosine,
128 / 32 tokens: the minilm preset's lengths); every size d scores the first d components,
re-normalised (evaluators/retrieval.truncate), by exact search and trec_eval's nDCG@10 per query.
Intervals: bench/ablation.py's bootstrap over queries, differences paired against --baseline at
the same size. One training seed: the test set's sampling noise only.
"""

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from bench import ablation  # noqa: E402


def per_dimension(model_dir: str, data, dims) -> dict:
  """{d: [Q] nDCG@10 per query} of one encoder."""
  from retromae_jax.evaluators import embed as encode
  from retromae_jax.evaluators import metrics, retrieval, search
  _, cfg, params, tok = encode.load_encoder(model_dir)
  docs = encode.embed(cfg, params, tok, list(data.corpus.values()), "mean", True, 128, 64)
  queries = encode.embed(cfg, params, tok, list(data.queries.values()), "mean", True, 32, 64)
  out = {}
  for d in dims:
    scores, indices = search.search(retrieval.truncate(queries, d, True),
                                    retrieval.truncate(docs, d, True), 100)
    run = metrics.run_from_topk(list(data.queries), list(data.corpus), indices, scores)
    _, per_query = metrics.per_query(data.qrels, run, ("ndcg@10",))
    out[d] = [float(x) for x in per_query["ndcg@10"]]
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--beir_dir", required=True)
  parser.add_argument("--runs", required=True, help="name:workdir,...")
  parser.add_argument("--start", default="")
  parser.add_argument("--dims", default="384,256,128,64")
  parser.add_argument("--baseline", default="plain")
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  from retromae_jax.data.evalsets import beir
  data = beir.load(args.beir_dir, "test")
  dims = [int(d) for d in args.dims.split(",")]
  models = dict(x.split(":", 1) for x in args.runs.split(","))
  if args.start:
    models["start"] = args.start
  begin = time.perf_counter()
  scores = {name: per_dimension(path, data, dims) for name, path in models.items()}
  result = {"dims": dims, "models": models, "num_queries": len(data.queries),
            "load_average": os.getloadavg(), "seconds": time.perf_counter() - begin,
            "bootstrap": {str(d): ablation.bootstrap({n: s[d] for n, s in scores.items()},
                                                     args.baseline) for d in dims}}
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=1)
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
