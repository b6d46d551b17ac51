"""Analytic FLOP accounting for MFU (model FLOPs utilisation), levanter-style.

Counts the matrix-multiply FLOPs the model really has to do per training step (2 per
multiply-add; backward = 2x forward, so a step is 3x forward), with the encoder's MLM head only at
the C encoder-masked slots and the decoder's head at all L positions, as retromae.py computes them;
train_flops_per_example follows the other objectives (retromae_jax/objectives) too.
Padding positions are counted (the device computes them); element-wise work is not.
"""

from absl import logging
import jax

# Dense bf16 peak FLOP/s per device (vendor figures). Device kinds as jax reports them.
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,  # v6e (Trillium)
    "TPU v6e": 918e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
}


def attention_forward_flops(cfg, query_tokens: int, kv_tokens: int) -> float:
  """Attention of `query_tokens` queries over `kv_tokens` keys, projections included."""
  d = cfg.hidden_size
  projections = 2 * d * d * (2 * query_tokens + 2 * kv_tokens)  # q, out on queries; k, v on keys
  attention = 2 * 2 * query_tokens * kv_tokens * d  # scores and weighted sum
  return projections + attention


def layer_forward_flops(cfg, query_tokens: int, kv_tokens: int) -> float:
  """One TransformerLayer over `query_tokens` queries attending to `kv_tokens` keys (per example)."""
  ffn = 2 * 2 * cfg.hidden_size * cfg.intermediate_size * query_tokens
  return attention_forward_flops(cfg, query_tokens, kv_tokens) + ffn


def head_forward_flops(cfg, positions: int) -> float:
  d, v = cfg.hidden_size, cfg.vocab_size
  return positions * (2 * d * d + 2 * d * v)


def train_flops_per_example(cfg, objective, seq_len: int, encoder_len: int | None = None,
                            encoder_positions: int = 0) -> float:
  """A training step's matmul FLOPs per example for `objective` (objectives/config.py).

  encoder_len: the encoder's width (L, or the narrower width under encoder.masking=drop);
  encoder_positions: C, where the MLM head runs for L_enc (it runs at every encoder position
  instead when the bag-of-words loss is on). Decoders run over all L positions.
  """
  encoder_len = encoder_len or seq_len
  encoder = cfg.num_layers * layer_forward_flops(cfg, encoder_len, encoder_len)
  head_positions = encoder_len if objective.bag_of_words else encoder_positions
  total = encoder + head_forward_flops(cfg, head_positions)
  if objective.has_decoder:
    layer = layer_forward_flops(cfg, seq_len, seq_len)
    if objective.decoder_kind == "cross_attention":
      memory = 1 if objective.cross_attend_to == "sentence" else encoder_len
      layer += attention_forward_flops(cfg, seq_len, memory)
    total += objective.decoder_layers * layer + head_forward_flops(cfg, seq_len)
  return 3.0 * total


def device_peak_flops(config, device=None) -> float:
  """Peak FLOP/s of one device: config.peak_flops_per_device, the table, the CPU value, or 0."""
  if config.peak_flops_per_device > 0:
    return float(config.peak_flops_per_device)
  device = device or jax.devices()[0]
  if device.platform == "cpu":
    return float(config.cpu_peak_flops)
  for kind, peak in sorted(PEAK_FLOPS.items(), key=lambda kv: -len(kv[0])):
    if device.device_kind.startswith(kind):
      return peak
  logging.warning("No peak FLOP/s known for device kind %r: MFU is not reported; set "
                  "--config.peak_flops_per_device", device.device_kind)
  return 0.0
