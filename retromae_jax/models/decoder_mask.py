"""The decoder's position-specific attention mask, rebuilt on the device from an O(L) payload.

The host (retromae_jax/data/pretrain/masking.py) draws, per example, a pool of P whole-word masks
(P = min(n, decoder_pool_size), a constant cap) and, per query row i, which pool mask row i uses.
It sends the pool bit-packed ([B, P, ceil(L/8)] uint8, bit = 1: masked) and the per-row choice
([B, L] int32): 128 * L bits + L ints per example instead of a dense L x L matrix. Here the dense
[B, L, L] mask is expanded on the device, where it is needed.
"""

import jax.numpy as jnp


def decoder_attention(decoder_pool, decoder_choice, attention_mask, segment_ids=None):
  """Returns visible[b, i, j] (bool): may decoder query row i attend to key position j.

  Row i sees exactly the positions that its drawn pool mask leaves unmasked, never itself,
  never padding; padded query rows see nothing. Packed rows (segment_ids [B, L]): never a
  position of another document either.
  """
  seq_len = attention_mask.shape[-1]
  pool_masked = jnp.unpackbits(decoder_pool, axis=-1, count=seq_len).astype(bool)  # [B, P, L]
  row_masked = jnp.take_along_axis(pool_masked, decoder_choice[:, :, None], axis=1)  # [B, L, L]
  real = attention_mask.astype(bool)
  not_self = ~jnp.eye(seq_len, dtype=bool)
  visible = ~row_masked & not_self & real[:, None, :] & real[:, :, None]
  if segment_ids is not None:
    visible &= segment_ids[:, :, None] == segment_ids[:, None, :]
  return visible
