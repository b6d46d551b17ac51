"""A decoder that cross-attends to the encoder's output (an option beside the reference).

Input: the shared embeddings of the [MASK]-ed copy of the text (decoder ratio, as basic
decoding; position 0 keeps [CLS]'s embedding: the encoder reaches the decoder only through the
cross-attention). Each of `decoder.num_layers` layers: bidirectional self-attention over the real
tokens, cross-attention to the memory, feed-forward. The memory is `decoder.cross_attend_to`:
'sentence' = h alone (a one-vector bottleneck, as RetroMAE's), 'tokens' = every encoder state
(the encoder's visible tokens under encoder.masking=drop). Loss on the decoder-masked positions.
Packed rows: each token's memory is its own document's (its [CLS] state, or its states).
"""

import jax.numpy as jnp

from retromae_jax.models.bert import segment_starts
from retromae_jax.models.decoder_layers import CrossAttentionBody, Stack
from retromae_jax.objectives import registry
from retromae_jax.objectives.pretraining_model import (PretrainingModel, row_layout,
                                                       self_attention_mask)


class CrossAttentionDecoding(PretrainingModel):
  """Parameters: {'bert', 'mlm_head', 'decoder': {'layers': stacked cross-attention layers}}."""

  def make_decoder(self):
    return Stack(CrossAttentionBody, self.cfg, self.objective.decoder_layers)

  def decode(self, hidden, key_mask, batch, deterministic: bool):
    segment_ids, positions = row_layout(batch)
    x = self.bert.embeddings(batch["decoder_input_ids"], deterministic, positions)
    self_mask = self_attention_mask(batch)
    sentence = self.objective.cross_attend_to == "sentence"
    if segment_ids is not None:
      memory = self.sentence_states(hidden, key_mask, batch) if sentence else hidden
      memory_mask = self.packed_memory_mask(batch, segment_ids, positions)
    elif sentence:
      memory = self.sentence_states(hidden, key_mask, batch)[:, :1]
      memory_mask = jnp.ones((hidden.shape[0], 1, 1, 1), bool)
    else:
      memory = hidden
      memory_mask = key_mask.astype(bool)[:, None, None, :]
    x = self.decoder(x, self_mask, memory, memory_mask, deterministic)
    return self.vocab_output(x)

  def packed_memory_mask(self, batch, segment_ids, positions):
    """[B, 1, L, Le]: a packed row's token sees its own document's [CLS] state (at the
    document's first row position, under either encoder part) or its encoder states."""
    if self.objective.cross_attend_to == "sentence":
      width = batch[registry.encoder_part(self.objective).encoder_input.ids].shape[1]
      visible = jnp.arange(width)[None, None, :] == segment_starts(positions)[..., None]
      visible &= (segment_ids > 0)[..., None]
    else:
      encoder_segments, _ = self.encoder_layout(batch)
      visible = ((segment_ids[:, :, None] == encoder_segments[:, None, :])
                 & (encoder_segments > 0)[:, None, :])
    return visible[:, None]
