"""The gradient cache of contrastive fine-tuning (Gao et al. 2021, "Scaling deep contrastive
learning batch size under memory limited setup").

Encode every chunk without keeping activations, take the loss and its gradient with respect to
the representations, then re-encode chunk by chunk under jax.vjp and accumulate the parameter
gradients. Memory holds one chunk's activations; the compute is one extra forward. Each row is
encoded as if alone (models/biencoder.py), so the cached step computes the plain step's function.
"""

import jax
import jax.numpy as jnp

from retromae_jax.models.biencoder import Spec, represent
from retromae_jax.models.contrastive_loss import flat_inputs, loss_fn, loss_targets, objective


def _chunked(x, chunks: int):
  """[N, ...] -> [chunks, N/chunks, ...]; chunk j holds rows j, j+chunks, ...: with the rows split
  over devices in contiguous blocks, every chunk is spread over all of them."""
  return x.reshape(x.shape[0] // chunks, chunks, *x.shape[1:]).swapaxes(0, 1)


def _unchunked(x):
  return x.swapaxes(0, 1).reshape(-1, *x.shape[2:])


def cached_value_and_grad(spec: Spec, params: dict, batch: dict, dropout_key, chunk_size: int):
  """((loss, aux), grads) as jax.value_and_grad(loss_fn), holding one chunk of `chunk_size` rows
  of activations at a time (the gradient cache)."""
  queries, passages, _ = flat_inputs(batch, dropout_key)
  for name, inputs in (("queries", queries), ("passages", passages)):
    if inputs[0].shape[0] % chunk_size:
      raise ValueError(f"gradient_cache.chunk_size: {chunk_size} does not divide the "
                       f"{inputs[0].shape[0]} {name} of the batch")

  def split(inputs):
    return jax.tree.map(lambda x: _chunked(x, x.shape[0] // chunk_size), inputs)

  def reps(inputs):
    # Forward passes only: nothing here is differentiated, so no activation outlives its chunk.
    return _unchunked(jax.lax.map(lambda c: represent(spec, params, *c), split(inputs)))

  q, p = reps(queries), reps(passages)
  # The whole loss (teacher scores, Matryoshka prefixes included) is taken on the vectors here.
  targets = loss_targets(batch)
  (loss, aux), (grad_q, grad_p) = jax.value_and_grad(
      lambda q, p: objective(spec, q, p, targets), argnums=(0, 1), has_aux=True)(q, p)

  def accumulate(grads, chunk):
    inputs, cotangent = chunk
    _, pullback = jax.vjp(lambda prm: represent(spec, prm, *inputs), params)
    return jax.tree.map(jnp.add, grads, pullback(cotangent)[0]), None

  grads = jax.tree.map(jnp.zeros_like, params)
  for inputs, cotangent in ((queries, grad_q), (passages, grad_p)):
    grads, _ = jax.lax.scan(accumulate, grads,
                            (split(inputs), _chunked(cotangent, cotangent.shape[0] // chunk_size)))
  return (loss, aux), grads


def value_and_grad(spec: Spec, params: dict, batch: dict, dropout_key=None, chunk_size: int = 0):
  """((loss, aux), grads): the plain step (chunk_size 0) or the gradient cache."""
  if chunk_size:
    return cached_value_and_grad(spec, params, batch, dropout_key, chunk_size)
  return jax.value_and_grad(lambda prm: loss_fn(spec, prm, batch, dropout_key), has_aux=True)(params)
