"""Basic decoding (the RetroMAE paper's ablation): reconstruct from a [MASK]-ed copy of the text.

The host masks whole words at the decoder ratio (every chosen token becomes [MASK]: the decoder
is thrown away after pretraining, so BERT's 10% random / 10% kept, which soften the train/test
mismatch of a model that is kept, have no purpose here). The decoder reads
[h, E(x~_1), ..., E(x~_{L-1})]: the shared embeddings of the masked ids with position 0's
replaced by the sentence vector h, as the paper's basic decoding; `decoder.num_layers` BERT
layers of bidirectional self-attention over the real tokens; the shared MLM head. The loss is on
the decoder-masked positions only (batch['decoder_targets'] is -100 elsewhere).
"""

import jax.numpy as jnp

from retromae_jax.models import pooling
from retromae_jax.models.objectives.layers import SelfAttentionBody, Stack
from retromae_jax.models.objectives.mlm import MaskedLM


class BasicDecoding(MaskedLM):
  """Parameters: {'bert', 'mlm_head', 'decoder': {'layers': stacked BERT layers}}."""

  def make_decoder(self):
    return Stack(SelfAttentionBody, self.cfg, self.objective.decoder_layers)

  def decode(self, hidden, key_mask, batch, deterministic: bool):
    x = self.bert.embeddings(batch["decoder_input_ids"], deterministic)
    h = pooling.sentence_vector(hidden, key_mask, self.cfg.sentence_vector)[:, None]
    x = jnp.concatenate([h.astype(x.dtype), x[:, 1:]], axis=1)
    keys = batch["attention_mask"].astype(bool)[:, None, None, :]  # padding keys invisible
    return self.mlm_head(self.decoder(x, keys, deterministic), self.word_embeddings)
