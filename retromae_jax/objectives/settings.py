"""The objective's static settings (hashable: a Flax module attribute), resolved from the config's
`objective`, `decoder` and `encoder` sections at start-up (trainers/settings.objective)."""

import dataclasses

MAX_DECODER_LAYERS = 12


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
  def bag_of_words(self) -> bool:
    return self.bow_weight > 0
