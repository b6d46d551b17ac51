"""Analytic FLOP accounting for MFU (model FLOPs utilisation), levanter-style.

Counts the matrix-multiply FLOPs the model really has to do per training step (2 per
multiply-add; backward = 2x forward, so a step is 3x forward), with the encoder's MLM head only at
the C encoder-masked slots and the decoder's head at all L positions, as retromae.py computes them.
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


def layer_forward_flops(cfg, query_tokens: int, kv_tokens: int) -> float:
  """One TransformerLayer over `query_tokens` queries attending to `kv_tokens` keys (per example)."""
  d, f = cfg.hidden_size, cfg.intermediate_size
  projections = 2 * d * d * (2 * query_tokens + 2 * kv_tokens)  # q, out on queries; k, v on keys
  attention = 2 * 2 * query_tokens * kv_tokens * d  # scores and weighted sum
  ffn = 2 * 2 * d * f * query_tokens
  return projections + attention + ffn


def head_forward_flops(cfg, positions: int) -> float:
  d, v = cfg.hidden_size, cfg.vocab_size
  return positions * (2 * d * d + 2 * d * v)


def retromae_train_flops_per_example(cfg, seq_len: int, encoder_positions: int) -> float:
  encoder = cfg.num_layers * layer_forward_flops(cfg, seq_len, seq_len)
  decoder = layer_forward_flops(cfg, seq_len, seq_len)
  heads = head_forward_flops(cfg, encoder_positions) + head_forward_flops(cfg, seq_len)
  return 3.0 * (encoder + decoder + heads)


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
