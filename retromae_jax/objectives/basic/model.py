"""Basic decoding (the RetroMAE paper's ablation): reconstruct from a [MASK]-ed copy of the text.

The host masks whole words at the decoder ratio (every chosen token becomes [MASK]: the decoder
is thrown away after pretraining, so BERT's 10% random / 10% kept, which soften the train/test
mismatch of a model that is kept, have no purpose here). The decoder reads
[h, E(x~_1), ..., E(x~_{L-1})]: the shared embeddings of the masked ids with position 0's
replaced by the sentence vector h, as the paper's basic decoding; `decoder.num_layers` BERT
layers of bidirectional self-attention over the real tokens; the shared MLM head. The loss is on
the decoder-masked positions only (batch['decoder_targets'] is -100 elsewhere). Packed rows:
each document's own h, positions and attention inside its segment.
"""

from retromae_jax.models.decoder_layers import SelfAttentionBody, Stack
from retromae_jax.objectives.pretraining_model import (PretrainingModel, optional_field,
                                                       self_attention_mask,
                                                       with_sentence_vectors)


class BasicDecoding(PretrainingModel):
  """Parameters: {'bert', 'mlm_head', 'decoder': {'layers': stacked BERT layers}}."""

  def make_decoder(self):
    return Stack(SelfAttentionBody, self.cfg, self.objective.decoder_layers)

  def decode(self, hidden, key_mask, batch, deterministic: bool):
    x = self.bert.embeddings(batch["decoder_input_ids"], deterministic,
                             optional_field(batch, "positions"))
    x = with_sentence_vectors(x, self.sentence_states(hidden, key_mask, batch), batch)
    mask = self_attention_mask(batch)  # padding keys invisible
    return self.vocab_output(self.decoder(x, mask, deterministic))
