"""The sentence vector of a sequence of hidden states: one definition for the RetroMAE decoder
(config model.sentence_vector), the embedder (encode, evaluate, mine) and fine-tuning
(config model.pooling), so that what pretraining trains is what the others read.

- 'cls'  : the final hidden state at position 0 ([CLS]); no pooler, no extra LayerNorm (the
           RetroMAE / BGE reference);
- 'mean' : the average over the real tokens (mask 1), [CLS] and [SEP] included, as
           sentence-transformers' mean pooling (all-MiniLM-L6-v2 was trained with it).
"""


import jax
import jax.numpy as jnp

POOLINGS = ("cls", "mean")


def sentence_vector(hidden, mask, pooling: str):
  """[B, D] from hidden [B, L, D] and mask [B, L] (1 = real token)."""
  if pooling == "cls":
    return hidden[:, 0]
  if pooling == "mean":
    # Summed in float32: a bfloat16 count is inexact beyond 256 tokens.
    weights = mask.astype(jnp.float32)[..., None]
    total = (hidden.astype(jnp.float32) * weights).sum(1)
    return (total / jnp.maximum(weights.sum(1), 1.0)).astype(hidden.dtype)
  raise ValueError(f"pooling: expected one of {POOLINGS}, got {pooling!r}")


def segment_mean(hidden, mask, segment_ids):
  """[B, L, D]: at every token, the mean over the real tokens (mask 1) of its own segment.

  Packed rows (data.pack): segment_ids [B, L] numbers each row's documents, so each document's
  mean sentence vector is that of the document encoded alone. The sums are scattered per row
  (vmap: the batch axis stays the scatter's batch axis, which data parallelism shards).
  """
  seq_len = hidden.shape[1]
  weights = mask.astype(jnp.float32)

  def one_row(h, w, s):
    total = jax.ops.segment_sum(h.astype(jnp.float32) * w[:, None], s, num_segments=seq_len)
    count = jax.ops.segment_sum(w, s, num_segments=seq_len)
    return (total / jnp.maximum(count, 1.0)[:, None])[s]

  return jax.vmap(one_row)(hidden, weights, segment_ids).astype(hidden.dtype)


def l2_normalize(vectors):
  return vectors / jnp.maximum(jnp.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def pool(hidden, mask, pooling: str, normalize: bool):
  """The sentence vector, L2-normalised when `normalize` (cosine similarity)."""
  pooled = sentence_vector(hidden, mask, pooling)
  return l2_normalize(pooled) if normalize else pooled


def sentence_transformers_config(pooling: str, hidden_size: int) -> dict:
  """The 1_Pooling/config.json that makes sentence-transformers pool as `pooling` does."""
  if pooling not in POOLINGS:
    raise ValueError(f"pooling: expected one of {POOLINGS}, got {pooling!r}")
  return {"word_embedding_dimension": hidden_size, "pooling_mode_cls_token": pooling == "cls",
          "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False,
          "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
          "pooling_mode_lasttoken": False, "include_prompt": True}
