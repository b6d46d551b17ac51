"""Analytic FLOP accounting for MFU (model FLOPs utilisation), levanter-style.

Counts the matrix-multiply FLOPs the model really has to do per training step (2 per
multiply-add; backward = 2x forward, so a step is 3x forward), with the encoder's MLM head only at
the C encoder-masked slots and the decoder's head at all L positions, as objectives/enhanced/model.py
computes them; every objective's parts state their own count (retromae_jax/objectives/).
Padding positions are counted (the device computes them); element-wise work is not.
Packed rows (data.pack) are counted as the device computes them, per slot: every row's
attention still scores all L x L pairs (the masks of other documents only hide them), so a
step's count is the same packed or not. What packing changes is how many of those slots are
real text: tokens/s counts real tokens (attention_mask), MFU counts what the device computes.
"""

from absl import logging
import jax

from retromae_jax.objectives import registry
from retromae_jax.objectives.flop_formulas import head_forward_flops, layer_forward_flops

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


def train_flops_per_example(cfg, objective, seq_len: int, encoder_len: int | None = None,
                            encoder_positions: int = 0) -> float:
  """A training step's matmul FLOPs per example for `objective` (objectives/settings.py).

  encoder_len: the encoder's width (L, or the narrower width under encoder.masking=drop);
  encoder_positions: C, where the MLM head runs for L_enc (every part says where it needs the
  head: objectives/registry.head_positions). Decoders run over all L positions, each part
  counting its own (objectives/<part>.py).
  """
  encoder_len = encoder_len or seq_len
  encoder = cfg.num_layers * layer_forward_flops(cfg, encoder_len, encoder_len)
  head = head_forward_flops(cfg, registry.head_positions(objective, encoder_len, encoder_positions))
  total = encoder + head + registry.parts_forward_flops(cfg, objective, seq_len, encoder_len)
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


def contrastive_train_flops(cfg, batch_size: int, group_size: int, query_len: int,
                            passage_len: int) -> float:
  """A contrastive fine-tuning step's matmul FLOPs (models/biencoder.py, contrastive_loss.py):
  the encoder over batch_size queries and batch_size x group_size passages, and every query
  scored against every passage; 3x forward. The gradient cache's second forward is not counted
  (as remat's recomputation is not: MFU counts the model's FLOPs, not the hardware's)."""
  def encoder(length):
    return cfg.num_layers * layer_forward_flops(cfg, length, length)
  passages = batch_size * group_size
  scores = 2 * batch_size * passages * cfg.hidden_size
  return 3.0 * (batch_size * encoder(query_len) + passages * encoder(passage_len) + scores)
