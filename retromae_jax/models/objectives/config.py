"""The objective's static settings (hashable: a Flax module attribute), read from the config."""

import dataclasses

OBJECTIVE_KINDS = ("retromae", "mlm")
DECODER_KINDS = ("enhanced", "basic", "cross_attention", "autoregressive")
CROSS_ATTEND_TO = ("sentence", "tokens")
ENCODER_MASKINGS = ("corrupt", "drop")
MAX_DECODER_LAYERS = 12

# What each decoder needs from the host (retromae_jax/data/masking.py): the enhanced decoder's
# pool of masks, a [MASK]-ed copy of the input at the decoder ratio, or next-token targets only.
DECODER_FIELDS = {"enhanced": "pool", "basic": "masked", "cross_attention": "masked",
                  "autoregressive": "next_token"}


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
  kind: str = "retromae"
  decoder_kind: str = "enhanced"
  decoder_layers: int = 1
  cross_attend_to: str = "sentence"  # cross_attention: 'sentence' (h alone) or 'tokens'
  attention_span: int = 0  # autoregressive: tokens each position sees besides h; 0 = all before it
  encoder_masking: str = "corrupt"
  bow_weight: float = 0.0

  @property
  def has_decoder(self) -> bool:
    return self.kind == "retromae"

  @property
  def decoder_fields(self) -> str:
    """'pool' | 'masked' | 'next_token' | 'none': the decoder's share of the batch contract."""
    return DECODER_FIELDS[self.decoder_kind] if self.has_decoder else "none"

  @property
  def bag_of_words(self) -> bool:
    return self.bow_weight > 0


def objective_config_from(config) -> ObjectiveConfig:
  """From the config's top-level `objective`, `decoder` and `encoder` sections."""
  return ObjectiveConfig(
      kind=config.objective.kind, decoder_kind=config.decoder.kind,
      decoder_layers=config.decoder.num_layers, cross_attend_to=config.decoder.cross_attend_to,
      attention_span=config.decoder.attention_span, encoder_masking=config.encoder.masking,
      bow_weight=float(config.objective.bow_weight))
