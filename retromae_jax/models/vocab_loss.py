"""The cross-entropy of the vocabulary projection without all the logits at once.

The MLM head's last step projects every position onto the vocabulary: [tokens, V] float32
logits (30,522 columns for BERT, 250,002 for XLM-R), and autodiff keeps them (and their
gradient) for the backward pass. Here the positions of each row are taken in blocks: a scan
over blocks of `block` positions (of every row at once, so the batch axis keeps its sharding)
computes each block's logits, its loss terms AND its gradients (softmax minus the one-hot
target: the loss is a sum, so its gradient is known in the forward pass), and keeps only the
gradients with respect to the hidden states (as small as the hidden states), the embeddings and
the bias (accumulated); the backward pass scales them by the loss's cotangent (a custom VJP).
One block's logits live at a time and nothing is recomputed: the FLOPs are the plain loss's.
Per token the same operations as the plain formulation (objectives/losses.masked_cross_entropy
over bert.vocab_logits); only the order of the sums over blocks differs. config.model.vocab_loss
picks it ('chunked', the default) or the plain one.

Under 'chunked' the MLM head hands the loss a Projection (its transformed states, the tied
embeddings and the bias: what the logits would be made of) instead of logits; the loss term
(objectives/losses.token_cross_entropy) scores it here, in blocks.
"""

import functools
import math

from flax import struct
import jax
import jax.numpy as jnp

VOCAB_LOSSES = ("chunked", "plain")


@struct.dataclass
class Projection:
  """The logits hidden . embeddings^T + bias, not yet computed: hidden [B, T, D] (the MLM head's
  transformed states, compute dtype), embeddings [V, D], bias [V]; `block`: positions per row in
  one block of chunked_cross_entropy."""
  hidden: jax.Array
  embeddings: jax.Array
  bias: jax.Array
  block: int = struct.field(pytree_node=False, default=128)


def _blocks(length: int, block: int) -> tuple[int, int]:
  """(number of blocks, positions per block) covering `length` with the least padding."""
  count = math.ceil(length / max(1, min(block, length)))
  return count, math.ceil(length / count)


def chunked_cross_entropy(hidden, embeddings, bias, labels, block: int = 128):
  """(sum of token losses, correctly predicted tokens, labelled tokens) over labels >= 0 (a
  negative label, e.g. objectives/contract.IGNORE = -100, has no loss).

  hidden [B, T, D] (the head's transformed states, compute dtype), embeddings [V, D] (tied word
  embeddings, compute dtype), bias [V], labels [B, T] int. Each block's logits are
  hidden . embeddings^T + bias in float32, as bert.vocab_logits computes them. Differentiable
  in the loss sum with respect to hidden, embeddings and bias.
  """
  return _chunked_sums(hidden, embeddings, bias, labels, block)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _chunked_sums(hidden, embeddings, bias, labels, block):
  return _chunked(hidden, embeddings, bias, labels, block)[0]


def _chunked(hidden, embeddings, bias, labels, block):
  """((loss sum, correct, labelled), (d loss / d hidden, d embeddings, d bias))."""
  batch, length, _ = hidden.shape
  count, size = _blocks(length, block)
  pad = count * size - length
  compute = jnp.result_type(hidden, embeddings)
  padded = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
  padded_labels = jnp.pad(labels, ((0, 0), (0, pad)), constant_values=-1)
  # [count, B, size, ...]: the scan runs over blocks of positions; rows stay where they are.
  split = lambda x: x.reshape(batch, count, size, *x.shape[2:]).swapaxes(0, 1)

  def add_block(totals, inputs):
    loss, correct, d_embeddings, d_bias = totals
    h, y = inputs
    logits = (jnp.einsum("btd,vd->btv", h, embeddings).astype(jnp.float32)
              + bias.astype(jnp.float32))
    valid = y >= 0
    safe = jnp.where(valid, y, 0)
    # One normalisation over the vocabulary serves the loss and its gradient.
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    token_loss = -jnp.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]
    # d token_loss / d logits = softmax - one_hot(target), zero at ignored positions.
    d_logits = jnp.where(valid[..., None], jnp.exp(log_probs)
                         - jax.nn.one_hot(safe, logits.shape[-1], dtype=jnp.float32), 0.0)
    d_h = jnp.einsum("btv,vd->btd", d_logits.astype(compute), embeddings)
    d_embeddings += jnp.einsum("btv,btd->vd", d_logits.astype(compute), h,
                               preferred_element_type=jnp.float32)
    d_bias += d_logits.sum(axis=(0, 1))
    totals = (loss + jnp.where(valid, token_loss, 0.0).sum(),
              correct + ((logits.argmax(-1) == y) & valid).sum(), d_embeddings, d_bias)
    return totals, d_h

  zero = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32),
          jnp.zeros(embeddings.shape, jnp.float32), jnp.zeros(bias.shape, jnp.float32))
  (loss, correct, d_embeddings, d_bias), d_hidden = jax.lax.scan(
      add_block, zero, (split(padded), split(padded_labels)))
  d_hidden = d_hidden.swapaxes(0, 1).reshape(batch, count * size, -1)[:, :length]
  sums = (loss, correct, (labels >= 0).sum())
  return sums, (d_hidden.astype(hidden.dtype), d_embeddings.astype(embeddings.dtype),
                d_bias.astype(bias.dtype))


def _chunked_backward(block, grads, cotangents):
  del block
  scale = cotangents[0]  # the loss sum's; correct and labelled are integers
  return (*(g * scale.astype(g.dtype) for g in grads), None)


# The forward pass is _chunked itself: its gradients are the residuals the backward pass scales.
_chunked_sums.defvjp(_chunked, _chunked_backward)
