"""Contrastive fine-tuning's loss: in-batch softmax cross-entropy over the global batch.

What is computed (FlagEmbedding's BiEncoderModel):
- scores = q [B, D] x p [B*G, D]^T / temperature over the GLOBAL batch (every device's passages
  are negatives for every query), and the target of query i is passage i*G (its positive);
- passages marked invalid (a query with fewer than G-1 negatives, retromae_jax/data/pairs.py)
  are left out of every query's softmax.
The loss is written on global arrays: under jit with sharded inputs, GSPMD decides where the
[B, B*G] product runs and gathers what it needs; there are no hand-written collectives.
Dropout: every encoded sequence draws its own key, fold_in(key, row) with row its index in the
global batch (models/biencoder.py says why).
"""

import jax
import jax.numpy as jnp
import optax

from retromae_jax.models.biencoder import Spec, represent

_QUERY, _PASSAGE = 0, 1  # dropout streams


def contrastive_loss(q, p, temperature: float, passage_valid=None):
  """In-batch softmax cross-entropy of q [B, D] against p [B*G, D]; target of query i is i*G.

  `passage_valid` [B*G] (bool) drops passages from every softmax. Returns (loss, aux) with aux
  {'accuracy': fraction of queries whose positive scores highest}.
  """
  num_queries, num_passages = q.shape[0], p.shape[0]
  if num_passages % num_queries:
    raise ValueError(f"contrastive_loss: {num_passages} passages for {num_queries} queries")
  group_size = num_passages // num_queries
  scores = jnp.einsum("qd,pd->qp", q.astype(jnp.float32), p.astype(jnp.float32)) / temperature
  if passage_valid is not None:
    scores = jnp.where(passage_valid[None, :], scores, -jnp.inf)
  targets = jnp.arange(num_queries) * group_size
  loss = optax.softmax_cross_entropy_with_integer_labels(scores, targets).mean()
  accuracy = (jnp.argmax(scores, axis=-1) == targets).mean()
  return loss, {"accuracy": accuracy}


def dropout_keys(key, count: int, stream: int):
  """[count] keys: fold_in(fold_in(key, stream), row) for every row of the global batch."""
  stream_key = jax.random.fold_in(key, stream)
  return jax.vmap(lambda i: jax.random.fold_in(stream_key, i))(jnp.arange(count))


def flat_inputs(batch: dict, dropout_key):
  """(query ids, mask, keys), (passage ids, mask, keys), passage_valid: passages as [B*G, L]."""
  b, g, lp = batch["passage_input_ids"].shape
  queries = (batch["query_input_ids"], batch["query_attention_mask"])
  passages = (batch["passage_input_ids"].reshape(b * g, lp),
              batch["passage_attention_mask"].reshape(b * g, lp))
  q_keys = p_keys = None
  if dropout_key is not None:
    q_keys, p_keys = dropout_keys(dropout_key, b, _QUERY), dropout_keys(dropout_key, b * g, _PASSAGE)
  return (*queries, q_keys), (*passages, p_keys), batch["passage_valid"].reshape(b * g)


def loss_fn(spec: Spec, params: dict, batch: dict, dropout_key=None):
  """(loss, aux) of a batch (retromae_jax/data/pairs.py's contract); dropout_key None: no dropout."""
  queries, passages, valid = flat_inputs(batch, dropout_key)
  q = represent(spec, params, *queries)
  p = represent(spec, params, *passages)
  return contrastive_loss(q, p, spec.temperature, valid)
