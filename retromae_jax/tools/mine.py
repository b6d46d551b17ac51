"""Hard negatives for contrastive fine-tuning: each query's best-scoring passages that are not
its positives, found with an encoder (FlagEmbedding's hn_mine, exact search instead of faiss).

  python -m retromae_jax.tools.mine --model=PATH --data=SRC --out=FILE.jsonl [--top_k=15]
      [--range=START-END] [--split=train] [--corpus=FILE.jsonl] [--pooling=cls|mean]
      [--normalize] [--max_len=N] [--query_max_len=N] [--batch_size=N]
      [--query_prefix=STR] [--passage_prefix=STR]

SRC is either
  - a BEIR folder: the queries judged in qrels/{split}.tsv, positives their documents with
    relevance >= 1, candidates the whole corpus; or
  - a FlagEmbedding jsonl file, lines {"query": str, "pos": [str], "neg": [str]}: candidates
    every distinct passage of all lines' pos and neg lists, or the "text" of every line of
    --corpus when given.
Each output line is {"query": str, "pos": [str], "neg": [str]}, neg the query's top_k best
candidates (best first) among ranks START..END-1 of the search (default: from rank 0), minus its
positives and any candidate equal to the query. Skipping the first ranks (FlagEmbedding uses
10-210) keeps unlabelled positives, which sit at the very top, out of the negatives.
Queries and passages are compared by dot product (cosine with --normalize), as evaluate does.

API: mine(query_emb, corpus_emb, positives, top_k, start=0, end=None, exclude=None)
  -> [Q] lists of corpus indices; the file handling around it is in main().
"""

import json
import os

import numpy as np
from absl import flags, logging

from retromae_jax.data import jsonl
from retromae_jax.evaluators import embed as encode
from retromae_jax.data.evalsets import beir
from retromae_jax.evaluators import search
from retromae_jax.tools import cli


def mine(query_emb: np.ndarray, corpus_emb: np.ndarray, positives, top_k: int, start: int = 0,
         end: int | None = None, exclude=None) -> list[list[int]]:
  """Per query, up to top_k corpus indices ranked start..end-1, best first, minus positives[i]
  (and exclude[i]), both collections of corpus indices. end=None: deep enough for top_k."""
  if top_k < 1 or start < 0 or (end is not None and end <= start):
    raise ValueError(f"mine: expected top_k >= 1 and 0 <= start < end, got top_k={top_k}, "
                     f"range {start}-{end}")
  exclude = exclude if exclude is not None else [()] * len(positives)
  if end is None:
    end = start + top_k + max((len(p) + len(e) for p, e in zip(positives, exclude)), default=0)
  _, indices = search.search(query_emb, corpus_emb, end)
  out = []
  for hits, pos, skip in zip(indices, positives, exclude):
    banned = set(pos) | set(skip)
    out.append([int(i) for i in hits[start:] if i not in banned][:top_k])
  return out


def read_pairs(path: str) -> list[dict]:
  """FlagEmbedding training lines; a missing or empty `neg` is an empty list."""
  records = []
  for line_no, record in jsonl.records(path):
    if not isinstance(record.get("query"), str):
      raise ValueError(f"{path}:{line_no}: expected an object with a string field 'query'")
    for field in ("pos", "neg"):
      value = record.get(field, [] if field == "neg" else None)
      if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise ValueError(f"{path}:{line_no}: field {field!r} must be a list of strings")
    if not record["pos"]:
      raise ValueError(f"{path}:{line_no}: field 'pos' is empty (a query needs a positive)")
    records.append({"query": record["query"], "pos": record["pos"],
                    "neg": record.get("neg", [])})
  return records


def _from_beir(beir_dir: str, split: str):
  """(query texts, positive texts per query, candidate texts, positive indices per query)."""
  data = beir.load(beir_dir, split)
  row = {doc_id: i for i, doc_id in enumerate(data.corpus)}
  candidates = list(data.corpus.values())
  queries, pos_texts, pos_rows = [], [], []
  for qid, text in data.queries.items():
    relevant = [d for d, rel in data.qrels[qid].items() if rel >= 1 and d in row]
    if not relevant:
      continue  # nothing to train on
    queries.append(text)
    pos_rows.append([row[d] for d in relevant])
    pos_texts.append([candidates[row[d]] for d in relevant])
  return queries, pos_texts, candidates, pos_rows


def _from_pairs(path: str, corpus_path: str | None):
  records = read_pairs(path)
  if corpus_path:
    candidates = list(dict.fromkeys(encode.read_texts(corpus_path)))
  else:
    candidates = list(dict.fromkeys(p for r in records for p in r["pos"] + r["neg"]))
  row = {text: i for i, text in enumerate(candidates)}
  pos_rows = [[row[p] for p in r["pos"] if p in row] for r in records]
  return [r["query"] for r in records], [r["pos"] for r in records], candidates, pos_rows


def _parse_range(value: str | None):
  if not value:
    return 0, None
  try:
    start, end = (int(x) for x in value.split("-"))
  except ValueError:
    raise ValueError(f"--range: expected START-END (e.g. 10-210), got {value!r}") from None
  return start, end


def _define_flags():
  """Flags exist only when this module runs as a program (see encode._define_flags)."""
  flags.DEFINE_string("model", None, "HF BERT directory, or a workdir with export/encoder.")
  flags.DEFINE_string("data", None, "A BEIR folder, or a FlagEmbedding jsonl file.")
  flags.DEFINE_string("split", "train", "BEIR data: which qrels/{split}.tsv gives the queries.")
  flags.DEFINE_string("corpus", None, "jsonl data: candidates from this file's `text` fields.")
  flags.DEFINE_string("out", None, "Output FlagEmbedding jsonl file.")
  flags.DEFINE_integer("top_k", 15, "Negatives per query.")
  flags.DEFINE_string("range", None, "START-END: draw negatives from these search ranks only.")
  flags.DEFINE_enum("pooling", "cls", encode.POOLINGS, "cls or mean pooling.")
  flags.DEFINE_bool("normalize", False, "L2-normalise embeddings (cosine similarity).")
  flags.DEFINE_integer("max_len", 512, "Passage (and by default query) length in tokens.")
  flags.DEFINE_integer("query_max_len", None, "Query length in tokens; default --max_len.")
  flags.DEFINE_integer("batch_size", 64, "Texts per forward pass.")
  flags.DEFINE_string("query_prefix", "", "Prepended to every query when embedding it.")
  flags.DEFINE_string("passage_prefix", "", "Prepended to every passage when embedding it.")
  flags.mark_flags_as_required(["model", "data", "out"])


def main(argv):
  del argv
  f = flags.FLAGS
  start, end = _parse_range(f.range)
  if os.path.isdir(f.data):
    queries, positives, candidates, pos_rows = _from_beir(f.data, f.split)
  else:
    queries, positives, candidates, pos_rows = _from_pairs(f.data, f.corpus)
  _, cfg, params, tok = encode.load_encoder(f.model)
  corpus_emb = encode.embed(cfg, params, tok, [f.passage_prefix + t for t in candidates],
                            f.pooling, f.normalize, f.max_len, f.batch_size,
                            label="corpus")
  query_emb = encode.embed(cfg, params, tok, [f.query_prefix + q for q in queries], f.pooling,
                           f.normalize, f.query_max_len or f.max_len, f.batch_size,
                           label="queries")
  row = {text: i for i, text in enumerate(candidates)}
  same_as_query = [[row[q]] if q in row else [] for q in queries]
  negatives = mine(query_emb, corpus_emb, pos_rows, f.top_k, start, end, same_as_query)
  os.makedirs(os.path.dirname(os.path.abspath(f.out)), exist_ok=True)
  with open(f.out, "w", encoding="utf-8") as out:
    for query, pos, neg in zip(queries, positives, negatives):
      out.write(json.dumps({"query": query, "pos": pos, "neg": [candidates[i] for i in neg]},
                           ensure_ascii=False) + "\n")
  short = sum(len(n) < f.top_k for n in negatives)
  logging.info("Wrote %s: %d queries, %d candidates; %d queries got fewer than %d negatives",
               f.out, len(queries), len(candidates), short, f.top_k)


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
