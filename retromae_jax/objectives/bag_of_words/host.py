"""objective.bow_weight > 0: DupMAE's bag-of-words loss, added to any objective.

The encoder's MLM head runs at every encoder position; its logits, max-pooled over positions
1.., must predict the SET of the text's ids (bag_of_words/model.py). The host sends
that set as O(L) weights instead of a [B, V] target.
"""

import numpy as np

from retromae_jax.objectives import contract


def fields(dims: contract.Dims) -> contract.Shapes:
  # 1/(n-2) at the first occurrence of each non-special text id, else 0
  return {"bow_weights": ((dims.batch_size, dims.seq_len), np.float32)}


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


def build(draw) -> dict[str, np.ndarray]:
  return {"bow_weights": bag_of_words_weights(draw.input_ids, draw.lengths, draw.spec.is_special)}


def checks(config) -> list[contract.Check]:
  weight = config.objective.bow_weight
  return [("objective.bow_weight", isinstance(weight, (int, float)) and weight >= 0,
           "expected a weight >= 0 (0 = no bag-of-words loss)")]


PART = contract.Part(
    name="bag_of_words", fields=fields, build=build, checks=checks,
    losses=(contract.LossTerm("bow", logits="bow_logits", targets="bow_weights",
                              per=contract.PER_DOCUMENT,
                              weight=lambda objective: objective.bow_weight,
                              loss="retromae_jax.objectives.bag_of_words.model:"
                                   "bag_of_words_loss"),),
    encoder_pool="retromae_jax.objectives.bag_of_words.model:max_pool",
    # Every position's logits are max-pooled: the head runs over the encoder's whole width.
    head_positions=lambda encoder_len, encoder_positions: encoder_len,
    enabled=lambda objective: objective.bag_of_words,
    packs={"bow_weights": contract.PACK_ZEROS})
