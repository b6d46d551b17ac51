"""Scaled dot-product attention: the one function every layer calls.

`attend(q, k, v, mask, ...)` takes queries [B, Lq, H, Dh], keys/values [B, Lk, H, Dh] and a
boolean mask broadcastable to [B, H, Lq, Lk] (True = may attend). Any visibility pattern goes
through the mask: key padding ([B, 1, 1, Lk]), the decoder's per-row masks ([B, 1, Lq, Lk]), or
per-segment masks of packed documents. Masked logits get finfo.min (finite, never -inf), so a
fully masked row (a padding query) averages the values instead of turning into NaN.

Implementations (config model.attention):
- 'dense': flax's nn.dot_product_attention, the [B, H, Lq, Lk] logits at once (what the encoder
  always used; exactly the numerics of HF's eager attention up to float rounding).
- 'chunked': the same computation one block of `block` queries at a time under lax.map, each block
  rematerialised in the backward pass, so memory holds one [B, H, block, Lk] block instead of
  the [B, H, Lq, Lk] matrix: linear in the length for a fixed block. Same softmax and masking
  per row as 'dense'; only the dropout draws differ (one key per block).
- 'cudnn': jax.nn.dot_product_attention's fused cuDNN kernel (GPU, bf16/fp16, no attention
  dropout); memory linear in the length.
- 'auto': 'dense' up to `dense_max_length` keys and 'chunked' beyond: at short lengths exactly
  today's numerics. It never picks 'cudnn' by itself: that kernel's handling of fully masked
  (padding) rows has not been checked on a GPU here yet.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

IMPLEMENTATIONS = ("auto", "dense", "chunked", "cudnn")


def resolve(implementation: str, kv_length: int, dense_max_length: int) -> str:
  """The implementation 'auto' stands for at this length (the others stand for themselves)."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"model.attention: expected one of {', '.join(IMPLEMENTATIONS)}, got "
                     f"{implementation!r}")
  if implementation != "auto":
    return implementation
  return "dense" if kv_length <= dense_max_length else "chunked"


def attend(q: Array, k: Array, v: Array, mask: Array, *, implementation: str = "auto",
           block: int = 512, dense_max_length: int = 1024, dropout_rate: float = 0.0,
           dropout_rng: Array | None = None, deterministic: bool = True, dtype=None) -> Array:
  """Softmax(q k^T / sqrt(Dh), masked) v -> [B, Lq, H, Dh]."""
  dtype = dtype or q.dtype
  dropout_active = not deterministic and dropout_rate > 0
  impl = resolve(implementation, k.shape[1], dense_max_length)
  if impl == "dense":
    return nn.dot_product_attention(
        q, k, v, mask=mask, dropout_rng=dropout_rng, dropout_rate=dropout_rate,
        broadcast_dropout=False, deterministic=deterministic, dtype=dtype)
  if impl == "cudnn":
    if dropout_active:
      raise ValueError("model.attention='cudnn' has no attention dropout; set "
                       "model.attention_dropout_rate=0 or use 'chunked'")
    # jax.nn's layout is ours: q/k/v [B, L, H, Dh], mask broadcastable to [B, H, Lq, Lk].
    return jax.nn.dot_product_attention(q.astype(dtype), k.astype(dtype), v.astype(dtype),
                                        mask=mask, implementation="cudnn")
  return _chunked(q, k, v, mask, block, dropout_rate if dropout_active else 0.0, dropout_rng,
                  dtype)


def _block_attention(q, k, v, mask, rng, dropout_rate, dtype):
  """nn.dot_product_attention's arithmetic on one block of queries (same order of operations)."""
  q = q / jnp.sqrt(q.shape[-1]).astype(q.dtype)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
  logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
  weights = jax.nn.softmax(logits).astype(dtype)
  if dropout_rate > 0:
    keep = jax.random.bernoulli(rng, 1.0 - dropout_rate, weights.shape)
    weights = weights * (keep / (1.0 - dropout_rate)).astype(dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def _chunked(q, k, v, mask, block, dropout_rate, rng, dtype):
  q, k, v = nn.dtypes.promote_dtype(q, k, v, dtype=dtype)
  batch, q_len, heads, head_dim = q.shape
  block = min(block, q_len)
  num_blocks = -(-q_len // block)
  padded = num_blocks * block
  mask = jnp.broadcast_to(mask, (*jnp.broadcast_shapes(mask.shape[:2], (batch, 1)),
                                 mask.shape[2], k.shape[1]))
  per_query_mask = mask.shape[2] != 1
  q = jnp.pad(q, ((0, 0), (0, padded - q_len), (0, 0), (0, 0)))
  q_blocks = q.reshape(batch, num_blocks, block, heads, head_dim).swapaxes(0, 1)
  if per_query_mask:
    mask = jnp.pad(mask, ((0, 0), (0, 0), (0, padded - q_len), (0, 0)))
    mask_blocks = mask.reshape(*mask.shape[:2], num_blocks, block, -1).transpose(2, 0, 1, 3, 4)
  else:
    mask_blocks = jnp.zeros((num_blocks,), bool)  # placeholder: the shared mask is closed over
  rng = jax.random.key(0) if rng is None else rng

  # Rematerialised: the backward pass recomputes a block's weights instead of storing all blocks'.
  @functools.partial(jax.checkpoint, prevent_cse=False)
  def one_block(args):
    index, q_block, mask_block = args
    block_mask = mask_block if per_query_mask else mask
    return _block_attention(q_block, k, v, block_mask, jax.random.fold_in(rng, index),
                            dropout_rate, dtype)

  out = jax.lax.map(one_block, (jnp.arange(num_blocks), q_blocks, mask_blocks))
  out = out.swapaxes(0, 1).reshape(batch, padded, heads, head_dim)
  return out[:, :q_len]
