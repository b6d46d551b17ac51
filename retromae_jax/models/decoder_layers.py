"""Decoder layer stacks: `num_layers` copies of one layer, scanned, parameters stacked along a
leading `layers` axis (as the encoder's). Each body carries the decoder's stream from layer to
layer; every other argument is the same for all layers."""

import flax.linen as nn

from retromae_jax.models.bert import (ModelConfig, TransformerLayer, attention_sublayer,
                               feed_forward_sublayer)


class TwoStreamBody(TransformerLayer):
  """The enhanced decoder's layer: the query stream is carried, keys/values stay H2."""

  def __call__(self, query, kv_stream, mask, deterministic):  # pytype: disable=signature-mismatch
    return super().__call__(query, kv_stream, mask, deterministic), None


class SelfAttentionBody(TransformerLayer):
  """A BERT layer attending over its own stream (basic and autoregressive decoders)."""

  def __call__(self, x, mask, deterministic):  # pytype: disable=signature-mismatch
    return super().__call__(x, x, mask, deterministic), None


class CrossAttentionBody(nn.Module):
  """Self-attention over the stream, then cross-attention to a memory (the encoder's output),
  then the feed-forward block; each sub-layer post-LayerNorm with its own residual."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, self_mask, memory, memory_mask, deterministic):
    x = attention_sublayer(self, self.cfg, x, x, self_mask, deterministic)
    x = attention_sublayer(self, self.cfg, x, memory, memory_mask, deterministic, prefix="cross_")
    return feed_forward_sublayer(self.cfg, x, deterministic), None


class Stack(nn.Module):
  """`num_layers` layers of `body` (a class above); call with (stream, *per-layer constants)."""
  body: type
  cfg: ModelConfig
  num_layers: int

  @nn.compact
  def __call__(self, x, *constants):
    scanned = nn.scan(
        self.body, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast,) * len(constants), length=self.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"})
    x, _ = scanned(self.cfg, name="layers")(x, *constants)
    return x
