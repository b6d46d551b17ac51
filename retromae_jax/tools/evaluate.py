"""Retrieval quality of an encoder on a BEIR folder: nDCG@10, MRR@10, recall, MAP.

  python -m retromae_jax.tools.evaluate --model=PATH --beir_dir=DIR [--split=test]
      [--pooling=auto|cls|mean] [--normalize] [--max_len=N] [--query_max_len=N] [--batch_size=N]
      [--top_k=100] [--query_prefix=STR] [--passage_prefix=STR] [--allow_missing_ids]
      [--dims=384,256,128,64]

--dims also scores the vectors truncated to each size (re-normalised with --normalize), a
Matryoshka model's use: "dim<d>/<measure>" keys in the JSON line, one log line per size.

The library behind it: retromae_jax/evaluators/retrieval.py.
"""

import json

from absl import flags, logging

from retromae_jax.evaluators import retrieval
from retromae_jax.evaluators import embed
from retromae_jax.tools import cli
from retromae_jax.interop import workdir


def _define_flags():
  flags.DEFINE_string("model", None, "HF BERT directory, or a workdir with export/encoder.")
  flags.DEFINE_string("beir_dir", None, "BEIR folder: corpus.jsonl, queries.jsonl, qrels/.")
  flags.DEFINE_string("split", "test", "Which qrels/{split}.tsv to score.")
  flags.DEFINE_enum("pooling", "auto", embed.POOLING_CHOICES, "auto: the model's own (its "
                    "sentence-transformers pooling config; else cls); cls: [CLS] hidden state; "
                    "mean: average over real tokens.")
  flags.DEFINE_bool("normalize", False, "L2-normalise embeddings (cosine similarity).")
  flags.DEFINE_integer("max_len", 512, "Passage (and by default query) length in tokens.")
  flags.DEFINE_integer("query_max_len", None, "Query length in tokens; default --max_len.")
  flags.DEFINE_integer("batch_size", 64, "Texts per forward pass.")
  flags.DEFINE_integer("top_k", 100, "Documents retrieved per query.")
  flags.DEFINE_string("query_prefix", "", "Prepended to every query (an instruction).")
  flags.DEFINE_string("passage_prefix", "", "Prepended to every document.")
  flags.DEFINE_bool("allow_missing_ids", False, "Score qrels that name queries or documents "
                    "missing from the folder (counted and logged) instead of failing.")
  flags.DEFINE_list("dims", [], "Also score the vectors truncated to these sizes.")
  flags.mark_flags_as_required(["model", "beir_dir"])


def main(argv):
  del argv
  f = flags.FLAGS
  pooling = workdir.resolve_pooling(f.model, f.pooling)
  result = retrieval.evaluate_model(f.model, f.beir_dir, f.split, pooling=pooling, normalize=f.normalize,
                          max_len=f.max_len, query_max_len=f.query_max_len,
                          batch_size=f.batch_size, top_k=f.top_k, query_prefix=f.query_prefix,
                          passage_prefix=f.passage_prefix,
                          allow_missing_ids=f.allow_missing_ids,
                          dims=tuple(int(d) for d in f.dims))
  logging.info("%s split %s: nDCG@10 %.4f over %d queries, %d documents", f.beir_dir, f.split,
               result["ndcg@10"], result["num_queries"], result["num_docs"])
  for dim in f.dims:
    logging.info("  truncated to %s: nDCG@10 %.4f", dim, result[f"dim{dim}/ndcg@10"])
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
