"""decoder.kind=tsdae (TSDAE: Wang, Reimers and Gurevych, "TSDAE: Using Transformer-based
Sequential Denoising Auto-Encoder for Unsupervised Sentence Embedding Learning", Findings of
EMNLP 2021): a causal decoder that sees the text only through cross-attention to the sentence
vector h, and reconstructs it token by token. The paper's recipe pairs it with a deleting
encoder: --config.encoder.masking=drop --config.data.encoder_mask_ratio=0.6.

Host side it is SEED-Encoder's: the next-token targets, no mask drawn (autoregressive/host.py).
The model: retromae_jax/objectives/tsdae/model.py.
"""

import numpy as np

from retromae_jax.objectives import contract
from retromae_jax.objectives.autoregressive.host import next_token_targets
from retromae_jax.objectives.flop_formulas import decoder_forward_flops


def fields(dims: contract.Dims) -> contract.Shapes:
  # the next token x_{t+1} for t = 0..n-3, else -100
  return {"decoder_targets": ((dims.batch_size, dims.seq_len), np.int32)}


def build(draw) -> dict[str, np.ndarray]:
  return {"decoder_targets": next_token_targets(draw.input_ids, draw.lengths)}


PART = contract.Part(
    name="tsdae", fields=fields, build=build,
    losses=(contract.LossTerm("dec", logits="decoder_logits", targets="decoder_targets"),),
    # Each layer: causal self-attention, cross-attention to one memory token (h), feed-forward.
    forward_flops=lambda cfg, objective, seq_len, encoder_len: decoder_forward_flops(
        cfg, objective, seq_len, memory_tokens=1),
    model="retromae_jax.objectives.tsdae.model:TSDAEDecoding",
    # A document's targets stay inside its own tokens; the model keeps attention in its segment.
    packs={"decoder_targets": contract.PACK_LABELS})
