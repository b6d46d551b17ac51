"""Adds teacher scores to a fine-tuning pairs file, for distillation (config.loss.kd_weight).

  python -m retromae_jax.tools.score --model=PATH --input=pairs.jsonl --output=scored.jsonl
      [--pooling=auto|cls|mean] [--normalize] [--max_len=N] [--query_max_len=N]
      [--batch_size=N] [--query_prefix=STR] [--passage_prefix=STR]

Every line of --input (FlagEmbedding's {"query", "pos", "neg"}) is written to --output with
`pos_scores` and `neg_scores` added (or replaced): the teacher's score of each text of `pos` /
`neg`, in order, as FlagEmbedding's add_reranker_score.py does with a reranker. The teacher is any
encoder this project loads (a HF BERT directory or one of our workdirs, evaluators/embed.py); the
score is the inner product of the query's and the passage's vectors, their cosine with
--normalize (the default). Other fields of a line are kept as they are.

Scale: training takes softmax(score / loss.kd_temperature) over a query's group, so cosine
scores want a kd_temperature near the teacher's own training temperature (e.g. 0.02 or 0.05);
FlagEmbedding's rerankers give logits, used with kd_temperature 1.
"""

import json
import os

import numpy as np
from absl import flags, logging

from retromae_jax.data import jsonl, pairs
from retromae_jax.evaluators import embed
from retromae_jax.interop import workdir
from retromae_jax.tools import cli


def _define_flags():
  flags.DEFINE_string("model", None, "The teacher: HF BERT directory, or a workdir.")
  flags.DEFINE_string("input", None, "FlagEmbedding jsonl: {query, pos, neg} per line.")
  flags.DEFINE_string("output", None, "Where to write the lines with pos_scores/neg_scores.")
  flags.DEFINE_enum("pooling", "auto", embed.POOLING_CHOICES, "auto: the teacher's own pooling.")
  flags.DEFINE_bool("normalize", True, "Cosine scores (L2-normalised vectors); else dot.")
  flags.DEFINE_integer("max_len", 512, "Passage length in tokens.")
  flags.DEFINE_integer("query_max_len", None, "Query length in tokens; default --max_len.")
  flags.DEFINE_integer("batch_size", 64, "Texts per forward pass.")
  flags.DEFINE_string("query_prefix", "", "Prepended to every query (the teacher's instruction).")
  flags.DEFINE_string("passage_prefix", "", "Prepended to every passage.")
  flags.mark_flags_as_required(["model", "input", "output"])


def score_records(records: list[tuple[int, dict]], path: str, cfg, params, tok, *, pooling: str,
                  normalize: bool, max_len: int, query_max_len: int, batch_size: int,
                  query_prefix: str = "", passage_prefix: str = "") -> list[dict]:
  """The records with pos_scores / neg_scores: every distinct text is embedded once."""
  queries, passages = {}, {}
  for line_no, record in records:
    if not isinstance(record.get("query"), str):
      raise ValueError(f"{path}:{line_no}: expected an object with a string 'query' field")
    queries.setdefault(record["query"], len(queries))
    for name in ("pos", "neg"):
      for text in pairs.text_field(path, line_no, record, name):
        passages.setdefault(text, len(passages))
  q = embed.embed(cfg, params, tok, [query_prefix + t for t in queries], pooling, normalize,
                  query_max_len, batch_size, label="queries")
  p = embed.embed(cfg, params, tok, [passage_prefix + t for t in passages], pooling, normalize,
                  max_len, batch_size, label="passages")
  out = []
  for line_no, record in records:
    qv = q[queries[record["query"]]]
    record = dict(record)
    for name in ("pos", "neg"):
      rows = [passages[t] for t in pairs.text_field(path, line_no, record, name)]
      record[f"{name}_scores"] = [float(x) for x in (p[rows] @ qv if rows else np.zeros(0))]
    out.append(record)
  return out


def main(argv):
  del argv
  f = flags.FLAGS
  records = list(jsonl.records(f.input))
  model_dir, cfg, params, tok = embed.load_encoder(f.model)
  pooling = workdir.resolve_pooling(model_dir, f.pooling)
  scored = score_records(records, f.input, cfg, params, tok, pooling=pooling,
                         normalize=f.normalize, max_len=f.max_len,
                         query_max_len=f.query_max_len or f.max_len, batch_size=f.batch_size,
                         query_prefix=f.query_prefix, passage_prefix=f.passage_prefix)
  os.makedirs(os.path.dirname(os.path.abspath(f.output)), exist_ok=True)
  with open(f.output, "w", encoding="utf-8") as out:
    out.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in scored)
  logging.info("Wrote %s: %d lines with teacher scores from %s (%s pooling, %s)", f.output,
               len(scored), model_dir, pooling, "cosine" if f.normalize else "dot")


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
