"""DupMAE's bag-of-words term, device side: the encoder's MLM logits max-pooled over each
document's positions 1.. (max_pool, the part's encoder_pool), and its loss (bag_of_words_loss,
the part's loss term). Packed rows (data.pack) pool and score each document on its own segment.
"""

import jax
import jax.numpy as jnp

from retromae_jax.objectives import losses
from retromae_jax.objectives.pretraining_model import optional_field

# DupMAE pushes padding positions down by this much before the max-pool (not -inf: a row of
# padding stays finite).
BOW_PAD_PENALTY = -1000.0


def bag_of_words_pool(logits, key_mask):
  """[B, V]: max over positions 1..L-1 of the logits [B, L, V], padding pushed down by 1000."""
  penalty = jnp.where(key_mask[:, 1:, None].astype(bool), 0.0, BOW_PAD_PENALTY)
  return (logits[:, 1:] + penalty).max(axis=1)


def segment_pool(logits, segment_ids, positions):
  """[B, S, V], S = Le // 2 (a document has at least [CLS] and [SEP]): entry k-1 of a row is the
  max of the logits over the positions 1.. of its k-th document (0 where it has none)."""
  batch, width, vocab = logits.shape
  per_row = width // 2
  member = (segment_ids > 0) & (positions >= 1)
  index = jnp.where(member, segment_ids - 1, per_row)  # per_row: dropped by segment_max
  pooled = jax.vmap(lambda row, ids: jax.ops.segment_max(row, ids, num_segments=per_row))(
      logits, index)
  return jnp.where(jnp.isneginf(pooled), 0.0, pooled).astype(logits.dtype)


def max_pool(logits, key_mask, segment_ids, positions) -> dict:
  """The part's encoder_pool: {'bow_logits': [B, V] unpacked, [B, S, V] packed}."""
  if segment_ids is None:
    return {"bow_logits": bag_of_words_pool(logits, key_mask)}
  return {"bow_logits": segment_pool(logits, segment_ids, positions)}


def bag_of_words_loss(bow_logits, batch, term, denominator=None):
  """DupMAE's L_bow, mean over documents; returns (loss, no further metrics).

  bow_logits: max_pool's; batch[term.targets] = bow_weights [B, L]: 1/len(text ids) at one
  position per distinct non-special id of a document (bag_of_words/host.py), so that
  -sum_j w_j log_softmax(pooled)[x_j] = -sum over the text's id set of log p(id) / len.
  `denominator` (default: this batch's documents) is what the sum over documents is divided by.
  """
  input_ids, weights = batch["input_ids"], batch[term.targets]
  log_probs = jax.nn.log_softmax(bow_logits.astype(jnp.float32), axis=-1)
  segment_ids = optional_field(batch, "segment_ids")
  if segment_ids is None:
    picked = jnp.take_along_axis(log_probs, input_ids, axis=1)  # [B, L]
  else:  # each token scored against its own document's pooled logits
    document = jnp.maximum(segment_ids - 1, 0)
    picked = log_probs[jnp.arange(input_ids.shape[0])[:, None], document, input_ids]
  per_example = -(weights * picked).sum(axis=-1)
  denom = losses.documents(batch) if denominator is None else denominator
  return per_example.sum() / jnp.asarray(denom, jnp.float32), {}
