"""Matmul FLOPs of the pieces every objective is made of (2 per multiply-add, forward only).

Plain arithmetic on the model's shape (models/bert.ModelConfig or anything with its fields), so
that each part of the registry can state its own count; trainers/flops.py adds them up.
"""


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


def decoder_forward_flops(cfg, objective, seq_len: int, memory_tokens: int = 0) -> float:
  """`objective.decoder_layers` layers over all L positions (each cross-attending to
  `memory_tokens` keys when > 0), then the shared MLM head at every position."""
  layer = layer_forward_flops(cfg, seq_len, seq_len)
  if memory_tokens:
    layer += attention_forward_flops(cfg, seq_len, memory_tokens)
  return objective.decoder_layers * layer + head_forward_flops(cfg, seq_len)
