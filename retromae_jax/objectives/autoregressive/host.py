"""decoder.kind=autoregressive (SEED-Encoder): a causal decoder conditioned on h predicts each next
token; decoder.attention_span limits how far back it sees. No decoder mask is drawn. The model:
retromae_jax/objectives/autoregressive/model.py.
"""

import numpy as np

from retromae_jax.objectives import contract
from retromae_jax.objectives.flop_formulas import decoder_forward_flops


def fields(dims: contract.Dims) -> contract.Shapes:
  # the next token x_{t+1} for t = 0..n-3, else -100
  return {"decoder_targets": ((dims.batch_size, dims.seq_len), np.int32)}


def next_token_targets(input_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """targets[t] = x_{t+1} for every text token x_1..x_{n-2} (t = 0..n-3), else -100."""
  batch, seq_len = input_ids.shape
  targets = np.full((batch, seq_len), contract.IGNORE, np.int32)
  predicts_text = np.arange(seq_len - 1) <= np.asarray(lengths)[:, None] - 3
  targets[:, :-1] = np.where(predicts_text, input_ids[:, 1:], contract.IGNORE)
  return targets


def build(draw) -> dict[str, np.ndarray]:
  return {"decoder_targets": next_token_targets(draw.input_ids, draw.lengths)}


def checks(config) -> list[contract.Check]:
  dec = config.decoder
  return [
      ("decoder.attention_span", contract.is_int(dec.attention_span) and dec.attention_span >= 0,
       "expected >= 0 (0 = every earlier token)"),
      ("decoder.attention_span", dec.attention_span == 0 or dec.kind == "autoregressive",
       "only the autoregressive decoder has an attention span; expected 0"),
  ]


PART = contract.Part(
    name="autoregressive", fields=fields, build=build, checks=checks,
    losses=(contract.LossTerm("dec", logits="decoder_logits", targets="decoder_targets"),),
    forward_flops=lambda cfg, objective, seq_len, encoder_len: decoder_forward_flops(
        cfg, objective, seq_len),
    model="retromae_jax.objectives.autoregressive.model:AutoregressiveDecoding",
    # A document's targets never reach past its last text token: they stay inside its segment.
    packs={"decoder_targets": contract.PACK_LABELS})
