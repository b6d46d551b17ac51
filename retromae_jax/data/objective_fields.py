"""Host-side batch fields that only some objectives need, from masks already drawn (no RNG).

- drop (encoder.masking): the unmasked tokens compacted to the front, their original positions;
- basic / cross_attention decoders: the text with the decoder-masked words replaced by [MASK];
- autoregressive decoder: next-token targets;
- bag of words (objective.bow_weight): per-position weights encoding the set of ids in the text.
All are O(L) per example, like the rest of the batch contract (pipeline.py).
"""

import numpy as np

from retromae_jax.models.losses import IGNORE


def drop_width(max_seq_length: int, capacity: int) -> int:
  """Width of the encoder's input under drop: what a full-length example leaves visible
  (L minus its mask budget C), at least [CLS] and [SEP]."""
  return max(2, max_seq_length - capacity)


def dropped_encoder_input(input_ids: np.ndarray, lengths: np.ndarray, masked: np.ndarray,
                          width: int, pad_id: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """The encoder's input under drop, and the final mask.

  masked [B, L] bool: the encoder's whole-word mask. Returns ({encoder_input_ids,
  encoder_position_ids, encoder_attention_mask}: int32 [B, width]; masked [B, L]). [CLS] and
  [SEP] are always kept. When the greedy walk left an example more unmasked text tokens than
  width - 2 (it fell short of its budget, or chose special tokens, which stay), its last ones
  are masked too: the returned mask is then exactly the complement of what the encoder reads.
  """
  batch, seq_len = input_ids.shape
  pos = np.arange(seq_len)
  lengths = np.asarray(lengths)[:, None]
  text = (pos >= 1) & (pos < lengths - 1)
  kept_text = text & ~masked
  kept_text &= np.cumsum(kept_text, axis=1) <= width - 2
  kept = kept_text | (pos == 0) | (pos == lengths - 1)
  # A stable sort puts the kept positions first, in their original order.
  order = np.argsort(~kept, axis=1, kind="stable")[:, :width]
  valid = np.arange(width) < kept.sum(axis=1, keepdims=True)
  fields = {
      "encoder_input_ids": np.where(valid, np.take_along_axis(input_ids, order, axis=1), pad_id),
      "encoder_position_ids": np.where(valid, order, 0),
      "encoder_attention_mask": valid,
  }
  return {k: v.astype(np.int32) for k, v in fields.items()}, text & ~kept


def masked_decoder_input(input_ids: np.ndarray, masked: np.ndarray,
                         mask_id: int) -> dict[str, np.ndarray]:
  """Basic / cross-attention decoders: every masked token becomes [MASK] and is a target."""
  return {
      "decoder_input_ids": np.where(masked, mask_id, input_ids).astype(np.int32),
      "decoder_targets": np.where(masked, input_ids, IGNORE).astype(np.int32),
  }


def next_token_targets(input_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """targets[t] = x_{t+1} for every text token x_1..x_{n-2} (t = 0..n-3), else -100."""
  batch, seq_len = input_ids.shape
  targets = np.full((batch, seq_len), IGNORE, np.int32)
  predicts_text = np.arange(seq_len - 1) <= np.asarray(lengths)[:, None] - 3
  targets[:, :-1] = np.where(predicts_text, input_ids[:, 1:], IGNORE)
  return targets


def bag_of_words_weights(input_ids: np.ndarray, lengths: np.ndarray,
                         is_special: np.ndarray | None) -> np.ndarray:
  """float32 [B, L]: 1 / len(text ids) at the first occurrence of each non-special text id, else 0.

  The text ids are the chunk's tokens between [CLS] and [SEP] (duplicates counted in the length);
  DupMAE's target is the SET of those ids minus special tokens, each weighted 1/len. Marking one
  position per distinct id keeps the payload O(L) instead of a [B, V] target.
  """
  batch, seq_len = input_ids.shape
  pos = np.arange(seq_len)
  lengths = np.asarray(lengths)
  text = (pos >= 1) & (pos < lengths[:, None] - 1)
  candidate = text if is_special is None else text & ~is_special[input_ids]
  none = np.iinfo(np.int64).max  # sorts after every id
  key = np.where(candidate, input_ids.astype(np.int64), none)
  order = np.argsort(key, axis=1, kind="stable")  # equal ids: first occurrence first
  ranked = np.take_along_axis(key, order, axis=1)
  first = ranked != none
  first[:, 1:] &= ranked[:, 1:] != ranked[:, :-1]
  weight = 1.0 / np.maximum(lengths - 2, 1)
  weights = np.zeros((batch, seq_len), np.float32)
  np.put_along_axis(weights, order, np.where(first, weight[:, None], 0.0), axis=1)
  return weights
