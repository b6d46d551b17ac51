"""RetroMAE: a BERT encoder with its MLM head, plus the enhanced decoder (the default objective).

What is computed follows FlagEmbedding's pretraining code (RetroMAE's reference):
- the encoder reads the 80/10/10-corrupted sequence; its MLM head runs only at the
  encoder-masked positions (the only place its loss needs vocabulary logits);
- the sentence vector h is the final hidden state at [CLS], no pooler;
- the decoder shares the embedding module and the MLM head with the encoder (tied parameters:
  its only own parameters are one TransformerLayer); keys/values are
  H2 = [h, E(x_1), ..., E(x_{L-1})] over the ORIGINAL ids, queries are H1[i] = LN(h + pos_i +
  type_0) ('embeddings', default) or h + pos_i ('raw', the RetroMAE repository);
- each query row sees the positions its drawn pool mask leaves visible (retromae_jax/models/decoder_mask.py).
Gradients of the decoder loss reach the encoder through h (not detached).

decoder.num_layers > 1 (a deeper decoder, not in the references): layer l's queries are
layer l-1's output, while keys/values stay H2 and the mask stays M in every layer. Query rows
never attend to each other, so no row ever sees its own token, however deep the stack.
The other objectives (retromae_jax/objectives/<part>/model.py) share the encoder side; the registry
(retromae_jax/objectives/registry.make_model) picks one.
"""

import flax.linen as nn
import jax.numpy as jnp

from retromae_jax.models import decoder_mask
from retromae_jax.models import pooling
from retromae_jax.models.bert import TransformerLayer, segment_starts
from retromae_jax.models.decoder_layers import Stack, TwoStreamBody
from retromae_jax.objectives.pretraining_model import PretrainingModel, optional_field


class RetroMAE(PretrainingModel):
  """Parameters: {'bert': encoder, 'mlm_head': shared head, 'decoder': the decoder layer(s)}.

  One layer (the spec) is a plain TransformerLayer; deeper decoders stack theirs on a `layers`
  axis under decoder/layers.
  """

  def make_decoder(self):
    if self.objective.decoder_layers == 1:
      return TransformerLayer(self.cfg)
    return Stack(TwoStreamBody, self.cfg, self.objective.decoder_layers)

  def decode(self, hidden, key_mask, batch, deterministic: bool):
    # The decoder attends to h and to the original tokens' embeddings only.
    cfg = self.cfg
    seq_len = batch["input_ids"].shape[1]
    positions, segment_ids = optional_field(batch, "positions"), optional_field(batch, "segment_ids")
    kv_stream = self.bert.embeddings(batch["input_ids"], deterministic, positions)
    if segment_ids is None:
      h = pooling.sentence_vector(hidden, key_mask, cfg.sentence_vector)[:, None]  # [B, 1, D]
      kv_stream = jnp.concatenate([h.astype(kv_stream.dtype), kv_stream[:, 1:]], axis=1)
      h_everywhere = jnp.broadcast_to(h, kv_stream.shape)
      positions = jnp.arange(seq_len)
    else:
      # Packed rows: each token's h is its own document's sentence vector ([CLS] state, or the
      # mean over the document's own tokens), which also replaces that [CLS]'s embedding in H2.
      if cfg.sentence_vector == "mean":
        h_everywhere = pooling.segment_mean(hidden, key_mask, segment_ids)
      else:
        starts = segment_starts(positions)
        h_everywhere = jnp.take_along_axis(hidden, starts[..., None], axis=1)
      kv_stream = jnp.where((positions == 0)[..., None], h_everywhere.astype(kv_stream.dtype),
                            kv_stream)
    if cfg.query_stream == "embeddings":
      query_stream = self.bert.embeddings.from_vectors(h_everywhere, deterministic,
                                                       None if segment_ids is None else positions)
    elif cfg.query_stream == "raw":
      query_stream = h_everywhere + self.bert.embeddings.positions(positions)
    else:
      raise ValueError(f"model.query_stream: expected 'embeddings' or 'raw', got {cfg.query_stream!r}")
    query_stream = nn.with_logical_constraint(query_stream, ("batch", "length", "embed"))

    visible = decoder_mask.decoder_attention(
        batch["decoder_pool"], batch["decoder_choice"], batch["attention_mask"], segment_ids)
    decoded = self.decoder(query_stream, kv_stream, visible[:, None], deterministic)
    return self.vocab_output(decoded)
