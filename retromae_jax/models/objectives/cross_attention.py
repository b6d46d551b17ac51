"""A decoder that cross-attends to the encoder's output (an option beside the reference).

Input: the shared embeddings of the [MASK]-ed copy of the text (decoder ratio, as basic
decoding; position 0 keeps [CLS]'s embedding: the encoder reaches the decoder only through the
cross-attention). Each of `decoder.num_layers` layers: bidirectional self-attention over the real
tokens, cross-attention to the memory, feed-forward. The memory is `decoder.cross_attend_to`:
'sentence' = h alone (a one-vector bottleneck, as RetroMAE's), 'tokens' = every encoder state
(the encoder's visible tokens under encoder.masking=drop). Loss on the decoder-masked positions.
"""

import jax.numpy as jnp

from retromae_jax.models import pooling
from retromae_jax.models.objectives.layers import CrossAttentionBody, Stack
from retromae_jax.models.objectives.mlm import MaskedLM


class CrossAttentionDecoding(MaskedLM):
  """Parameters: {'bert', 'mlm_head', 'decoder': {'layers': stacked cross-attention layers}}."""

  def make_decoder(self):
    return Stack(CrossAttentionBody, self.cfg, self.objective.decoder_layers)

  def decode(self, hidden, key_mask, batch, deterministic: bool):
    x = self.bert.embeddings(batch["decoder_input_ids"], deterministic)
    self_mask = batch["attention_mask"].astype(bool)[:, None, None, :]
    if self.objective.cross_attend_to == "sentence":
      memory = pooling.sentence_vector(hidden, key_mask, self.cfg.sentence_vector)[:, None]
      memory_mask = jnp.ones((hidden.shape[0], 1, 1, 1), bool)
    else:
      memory = hidden
      memory_mask = key_mask.astype(bool)[:, None, None, :]
    x = self.decoder(x, self_mask, memory, memory_mask, deterministic)
    return self.mlm_head(x, self.word_embeddings)
