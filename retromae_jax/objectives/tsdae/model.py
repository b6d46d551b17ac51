"""TSDAE's decoder: causal self-attention over the ORIGINAL text, cross-attention to h alone.

Input: the shared embeddings of [CLS], x_1, ..., x_{n-1} (position 0 keeps [CLS]'s embedding: as
in TSDAE, the encoder reaches the decoder only through the cross-attention, whose memory is the
sentence vector h alone); position t predicts x_{t+1} (batch['decoder_targets']). Each of
`decoder.num_layers` layers: causal self-attention, cross-attention to h, feed-forward (the
cross_attention decoder's layers, with the autoregressive decoder's causal mask). Packed rows:
each document's own positions, causal mask and h.
"""

import jax.numpy as jnp

from retromae_jax.objectives.autoregressive.model import causal_attention
from retromae_jax.objectives.cross_attention.model import CrossAttentionDecoding
from retromae_jax.objectives.pretraining_model import row_layout


class TSDAEDecoding(CrossAttentionDecoding):
  """Parameters: {'bert', 'mlm_head', 'decoder': {'layers': stacked cross-attention layers}}."""

  def decode(self, hidden, key_mask, batch, deterministic: bool):
    sentence = self.sentence_states(hidden, key_mask, batch)
    segment_ids, positions = row_layout(batch)
    x = self.bert.embeddings(batch["input_ids"], deterministic, positions)
    self_mask = causal_attention(batch["attention_mask"], 0, segment_ids, positions)
    if segment_ids is None:
      memory = sentence[:, :1]
      memory_mask = jnp.ones((hidden.shape[0], 1, 1, 1), bool)
    else:
      memory, memory_mask = sentence, self.packed_memory_mask(batch, segment_ids, positions)
    x = self.decoder(x, self_mask, memory, memory_mask, deterministic)
    return self.vocab_output(x)
