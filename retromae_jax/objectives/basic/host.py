"""decoder.kind=basic (the RetroMAE paper's ablation): reconstruct from a [MASK]-ed copy of the text.

The host masks whole words at the decoder ratio; every chosen token becomes [MASK] (the decoder
is thrown away after pretraining, so BERT's 10% random / 10% kept have no purpose here) and is a
target. The model: retromae_jax/objectives/basic/model.py.
"""

import numpy as np

from retromae_jax.objectives import contract
from retromae_jax.objectives.flop_formulas import decoder_forward_flops


def fields(dims: contract.Dims) -> contract.Shapes:
  rows = (dims.batch_size, dims.seq_len)
  return {
      "decoder_input_ids": (rows, np.int32),  # input_ids, the decoder-masked words -> [MASK]
      "decoder_targets": (rows, np.int32),  # original ids at those positions only, else -100
  }


def masked_decoder_input(input_ids: np.ndarray, masked: np.ndarray,
                         mask_id: int) -> dict[str, np.ndarray]:
  """Every masked token becomes [MASK] and is a target."""
  return {
      "decoder_input_ids": np.where(masked, mask_id, input_ids).astype(np.int32),
      "decoder_targets": np.where(masked, input_ids, contract.IGNORE).astype(np.int32),
  }


def build(draw) -> dict[str, np.ndarray]:
  masked = draw.whole_word_mask(draw.spec.decoder_mask_ratio, "decoder_mask")
  return masked_decoder_input(draw.input_ids, masked, draw.spec.mask_id)


PACKS = {"decoder_input_ids": contract.PACK_IDS, "decoder_targets": contract.PACK_LABELS}
LOSSES = (contract.LossTerm("dec", logits="decoder_logits", targets="decoder_targets"),)

PART = contract.Part(
    name="basic", fields=fields, build=build, streams={"decoder_mask": 5}, losses=LOSSES,
    forward_flops=lambda cfg, objective, seq_len, encoder_len: decoder_forward_flops(
        cfg, objective, seq_len),
    model="retromae_jax.objectives.basic.model:BasicDecoding", packs=PACKS)
