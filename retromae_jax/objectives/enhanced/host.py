"""decoder.kind=enhanced (the default): RetroMAE's enhanced decoding, as FlagEmbedding's code.

Each query row i sees the positions that its own whole-word mask, drawn at the decoder ratio,
leaves visible. The host draws, per example, a pool of P = min(n, data.decoder_pool_size) masks
and for each query row the pool row it uses (O(L) per example, bit-packed); the device expands
the dense [B, L, L] visibility (models/decoder_mask.py). The decoder predicts every text token.
"""

import numpy as np

from retromae_jax.objectives import example_random
from retromae_jax.objectives import contract
from retromae_jax.objectives.flop_formulas import decoder_forward_flops


def fields(dims: contract.Dims) -> contract.Shapes:
  rows = (dims.batch_size, dims.seq_len)
  return {
      # np.packbits of the pool masks along the tokens (bit 1 = masked); rows that no query row
      # chooses are zero (not computed: data/masking.Draw.mask_pool)
      "decoder_pool": ((dims.batch_size, dims.pool_size, (dims.seq_len + 7) // 8), np.uint8),
      "decoder_choice": (rows, np.int32),  # the pool row each query row uses (0 on padding rows)
      "decoder_targets": (rows, np.int32),  # original ids on the text tokens, else -100
  }


def build(draw) -> dict[str, np.ndarray]:
  spec = draw.spec
  batch, seq_len = draw.input_ids.shape
  real = np.arange(seq_len) < draw.lengths[:, None]
  pool_rows = np.minimum(draw.lengths, spec.decoder_pool_size)
  choice = np.where(real, example_random.below(draw.token_bits("decoder_choice"),
                                               np.maximum(pool_rows, 1)[:, None]), 0)
  return {
      "decoder_pool": draw.mask_pool(spec.decoder_mask_ratio, spec.decoder_pool_size, choice,
                                     "decoder_pool"),
      "decoder_choice": choice.astype(np.int32),
      "decoder_targets": np.where(draw.word_of_token >= 0, draw.input_ids,
                                  contract.IGNORE).astype(np.int32),
  }


PART = contract.Part(
    name="enhanced", fields=fields, build=build,
    streams={"decoder_pool": 3, "decoder_choice": 4},
    losses=(contract.LossTerm("dec", logits="decoder_logits", targets="decoder_targets"),),
    forward_flops=lambda cfg, objective, seq_len, encoder_len: decoder_forward_flops(
        cfg, objective, seq_len),
    model="retromae_jax.objectives.enhanced.model:RetroMAE",
    packs={"decoder_pool": contract.PACK_POOL, "decoder_choice": contract.PACK_ZEROS,
           "decoder_targets": contract.PACK_LABELS})
