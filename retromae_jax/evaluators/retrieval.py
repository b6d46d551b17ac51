"""Retrieval quality of an encoder on a BEIR folder: nDCG@10, MRR@10, recall, MAP.

  python -m retromae_jax.tools.evaluate --model=PATH --beir_dir=DIR [--split=test]
      [--pooling=cls|mean] [--normalize] [--max_len=N] [--query_max_len=N] [--batch_size=N]
      [--top_k=100] [--query_prefix=STR] [--passage_prefix=STR] [--allow_missing_ids]

Qrels that name queries or documents missing from the folder are an error (with every id
mismatched, the scores would be 0 and look like a bad model) unless --allow_missing_ids.

--model is a HF BERT directory or one of our workdirs (interop/workdir.resolve_model_dir). The corpus and
the split's judged queries are embedded (batches split over all devices), every query's top_k
documents found by exact search (evaluators/search.py: dot product; with --normalize that is
cosine), and the run scored with trec_eval's semantics (evaluators/metrics.py). The last line
printed is one JSON object:
  {"ndcg@10", "mrr@10", "recall@10", "recall@100", "map@100", "p@10", ["recall@<top_k>"],
   "num_queries", "num_docs", "encode_seconds", "search_seconds"}

From Python (the fine-tuning loop's periodic evaluation, with its in-memory params):
  evaluate_params(cfg, params, tokenizer, data, split="test", *, pooling="cls",
                  normalize=False, max_len=512, query_max_len=None, batch_size=64, top_k=100,
                  query_prefix="", passage_prefix="", measures=None, dims=()) -> dict
    (the JSON above; with dims, also "dim<d>/<measure>" for every d: the vectors' first d
    components, re-normalised with --normalize: a Matryoshka model's truncated vectors)
    data: a BEIR folder path or a retrieval.beir.BeirData (load it once, evaluate many times:
          beir.load(dir, split, allow_missing_ids));
    params: {'bert': ...}, as encode.embed takes them; tokenizer: a tokenizers.Tokenizer.
  evaluate_embeddings(query_emb, corpus_emb, data, top_k=100, measures=None) -> dict
"""

import time

import numpy as np

from retromae_jax.evaluators import embed as encode
from retromae_jax.data.evalsets import beir
from retromae_jax.evaluators import metrics
from retromae_jax.evaluators import search

_REQUIRED = ("ndcg@10", "mrr@10", "recall@10", "recall@100", "map@100", "p@10")


def _measures(measures, top_k):
  if measures is not None:
    return tuple(measures)
  extra = () if f"recall@{top_k}" in _REQUIRED else (f"recall@{top_k}",)
  return _REQUIRED + extra


def evaluate_embeddings(query_emb: np.ndarray, corpus_emb: np.ndarray, data: beir.BeirData,
                        top_k: int = 100, measures=None) -> dict:
  """Scores embeddings whose rows follow data.queries and data.corpus (their dict order)."""
  if len(query_emb) != len(data.queries) or len(corpus_emb) != len(data.corpus):
    raise ValueError(f"evaluate_embeddings: {len(query_emb)} query and {len(corpus_emb)} corpus "
                     f"rows for {len(data.queries)} queries and {len(data.corpus)} documents")
  start = time.perf_counter()
  scores, indices = search.search(query_emb, corpus_emb, top_k)
  run = metrics.run_from_topk(list(data.queries), list(data.corpus), indices, scores)
  result = metrics.evaluate(data.qrels, run, _measures(measures, top_k))
  result["num_docs"] = len(data.corpus)
  result["search_seconds"] = time.perf_counter() - start
  return result


def evaluate_params(cfg, params, tokenizer, data, split: str = "test", *, pooling: str = "cls",
                    normalize: bool = False, max_len: int = 512, query_max_len: int | None = None,
                    batch_size: int = 64, top_k: int = 100, query_prefix: str = "",
                    passage_prefix: str = "", measures=None, dims=()) -> dict:
  """Embeds with in-memory params and scores the split; see the module docstring."""
  if isinstance(data, str):
    data = beir.load(data, split)
  if not data.corpus or not data.queries:
    raise ValueError(f"evaluate: nothing to evaluate ({len(data.corpus)} documents, "
                     f"{len(data.queries)} judged queries)")
  start = time.perf_counter()
  corpus_emb = encode.embed(cfg, params, tokenizer,
                            [passage_prefix + t for t in data.corpus.values()], pooling,
                            normalize, max_len, batch_size, label="corpus")
  query_emb = encode.embed(cfg, params, tokenizer,
                           [query_prefix + t for t in data.queries.values()], pooling, normalize,
                           query_max_len or max_len, batch_size, label="queries")
  encode_seconds = time.perf_counter() - start
  result = evaluate_embeddings(query_emb, corpus_emb, data, top_k, measures)
  result["encode_seconds"] = encode_seconds
  for dim in dims:
    if not 0 < dim <= query_emb.shape[1]:
      raise ValueError(f"dims: {dim} is not in 1..{query_emb.shape[1]} (the vector's size)")
    q, c = (truncate(x, dim, normalize) for x in (query_emb, corpus_emb))
    truncated = evaluate_embeddings(q, c, data, top_k, measures)
    result.update({f"dim{dim}/{k}": truncated[k] for k in _measures(measures, top_k)})
  return result


def truncate(vectors: np.ndarray, dim: int, normalize: bool) -> np.ndarray:
  """The first `dim` components of every row, re-normalised when the vectors are unit-length."""
  out = vectors[:, :dim]
  if normalize:
    out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
  return out


def evaluate_model(model: str, beir_dir: str, split: str = "test", *,
                   allow_missing_ids: bool = False, **kwargs) -> dict:
  """evaluate_params for a HF BERT directory or workdir on disk. The folder is read (and its ids
  checked: beir.load) before the model, so that bad data fails in seconds."""
  data = beir.load(beir_dir, split, allow_missing_ids)
  _, cfg, params, tokenizer = encode.load_encoder(model)
  return evaluate_params(cfg, params, tokenizer, data, split, **kwargs)
