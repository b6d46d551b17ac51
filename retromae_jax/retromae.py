"""RetroMAE: a BERT encoder with its MLM head, plus the one-layer enhanced decoder.

What is computed follows ../shared/spec/retromae.md section 2 (FlagEmbedding's pretraining code):
- the encoder reads the 80/10/10-corrupted sequence; its MLM head runs only at the
  encoder-masked positions (the only place its loss needs vocabulary logits);
- the sentence vector h is the final hidden state at [CLS], no pooler;
- the decoder shares the embedding module and the MLM head with the encoder (tied parameters:
  its only own parameters are one TransformerLayer); keys/values are
  H2 = [h, E(x_1), ..., E(x_{L-1})] over the ORIGINAL ids, queries are H1[i] = LN(h + pos_i +
  type_0) ('embeddings', default) or h + pos_i ('raw', the RetroMAE repository);
- each query row sees the positions its drawn pool mask leaves visible (retromae_jax/decoder_mask.py).
Gradients of the decoder loss reach the encoder through h (not detached).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from retromae_jax import decoder_mask
from retromae_jax.bert import BertModel, MLMHead, ModelConfig, TransformerLayer


class RetroMAE(nn.Module):
  """Parameters: {'bert': encoder, 'mlm_head': shared head, 'decoder': the one decoder layer}."""
  cfg: ModelConfig

  def setup(self):
    self.bert = BertModel(self.cfg)
    self.mlm_head = MLMHead(self.cfg)
    self.decoder = TransformerLayer(self.cfg)

  def encode(self, input_ids, attention_mask, deterministic: bool = True):
    """Last hidden states [B, L, D] of the encoder alone (for embedding and fine-tuning)."""
    return self.bert(input_ids, attention_mask, deterministic)

  def __call__(self, batch, deterministic: bool = False):
    """Returns (encoder logits [B, C, V] at batch['encoder_positions'], decoder logits [B, L, V])."""
    cfg = self.cfg
    hidden = self.bert(batch["encoder_input_ids"], batch["attention_mask"], deterministic)
    word_embeddings = self.bert.embeddings.word_embeddings.embedding

    masked_hidden = jnp.take_along_axis(hidden, batch["encoder_positions"][..., None], axis=1)
    encoder_logits = self.mlm_head(masked_hidden, word_embeddings)

    h = hidden[:, :1]  # [B, 1, D]: the sentence vector
    seq_len = hidden.shape[1]
    kv_stream = self.bert.embeddings(batch["input_ids"], deterministic)
    kv_stream = jnp.concatenate([h.astype(kv_stream.dtype), kv_stream[:, 1:]], axis=1)
    h_everywhere = jnp.broadcast_to(h, hidden.shape)
    if cfg.query_stream == "embeddings":
      query_stream = self.bert.embeddings.from_vectors(h_everywhere, deterministic)
    elif cfg.query_stream == "raw":
      query_stream = h_everywhere + self.bert.embeddings.position_embeddings(jnp.arange(seq_len))
    else:
      raise ValueError(f"model.query_stream: expected 'embeddings' or 'raw', got {cfg.query_stream!r}")
    query_stream = nn.with_logical_constraint(query_stream, ("batch", "length", "embed"))

    visible = decoder_mask.decoder_attention(
        batch["decoder_pool"], batch["decoder_choice"], batch["attention_mask"])
    decoded = self.decoder(query_stream, kv_stream, visible[:, None], deterministic)
    decoder_logits = self.mlm_head(decoded, word_embeddings)
    return encoder_logits, decoder_logits


def model_config_from(config, vocab_size: int) -> ModelConfig:
  """Builds the static ModelConfig from `config.model`, resolving 'auto' dtype and vocab -1."""
  m = config.model
  dtype = m.dtype
  if dtype == "auto":
    dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
  return ModelConfig(
      vocab_size=m.vocab_size if m.vocab_size > 0 else vocab_size,
      hidden_size=m.hidden_size, num_layers=m.num_layers, num_heads=m.num_heads,
      intermediate_size=m.intermediate_size, max_position_embeddings=m.max_position_embeddings,
      type_vocab_size=m.type_vocab_size, dropout_rate=m.dropout_rate,
      attention_dropout_rate=m.attention_dropout_rate, initializer_range=m.initializer_range,
      layer_norm_eps=m.layer_norm_eps, dtype=jnp.dtype(dtype), param_dtype=jnp.dtype(m.param_dtype),
      query_stream=m.query_stream, remat=m.remat)
