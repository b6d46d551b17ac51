"""A causal decoder conditioned on the sentence vector (SEED-Encoder), predicting each next token.

Input: [h, E(x_1), ..., E(x_{L-1})] (the shared embeddings of the ORIGINAL ids, position 0's
replaced by h, as the enhanced decoder's H2); position t predicts x_{t+1}, for every text token
(batch['decoder_targets'][t] = x_{t+1}; [CLS] and [SEP] are never targets). No mask is drawn.
Attention, in every one of `decoder.num_layers` self-attention layers: position t sees h and the
tokens x_{t-k+1..t}, the k tokens before its target, with k = decoder.attention_span (SEED-Encoder
restricts it to keep the decoder weak, so the encoder must carry the text); 0 = x_1..x_t. As in
SEED-Encoder the span is per layer: n layers reach back n*(k-1)+1 tokens. Packed rows: the same
inside each document (its own h, its positions), never across.
"""

import jax.numpy as jnp

from retromae_jax.models.decoder_layers import SelfAttentionBody, Stack
from retromae_jax.objectives.pretraining_model import (PretrainingModel, row_layout,
                                                       with_sentence_vectors)


def causal_attention(attention_mask, span: int, segment_ids=None, positions=None):
  """visible[b, 0, t, j]: may position t attend to position j (h at 0, then tokens <= t);
  packed rows (segment_ids, positions [B, L]): t and j of one document, by its positions."""
  if segment_ids is None:
    seq_len = attention_mask.shape[-1]
    t = jnp.arange(seq_len)[None, :, None]
    j = jnp.arange(seq_len)[None, None, :]
  else:
    t, j = positions[:, :, None], positions[:, None, :]
  visible = j <= t
  if span > 0:
    visible &= (j > t - span) | (j == 0)
  if segment_ids is not None:
    visible &= segment_ids[:, :, None] == segment_ids[:, None, :]
  return visible[:, None] & attention_mask.astype(bool)[:, None, None, :]


class AutoregressiveDecoding(PretrainingModel):
  """Parameters: {'bert', 'mlm_head', 'decoder': {'layers': stacked BERT layers}}."""

  def make_decoder(self):
    return Stack(SelfAttentionBody, self.cfg, self.objective.decoder_layers)

  def decode(self, hidden, key_mask, batch, deterministic: bool):
    segment_ids, positions = row_layout(batch)
    x = self.bert.embeddings(batch["input_ids"], deterministic, positions)
    x = with_sentence_vectors(x, self.sentence_states(hidden, key_mask, batch), batch)
    mask = causal_attention(batch["attention_mask"], self.objective.attention_span, segment_ids,
                            positions)
    return self.vocab_output(self.decoder(x, mask, deterministic))
