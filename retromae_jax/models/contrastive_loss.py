"""Contrastive fine-tuning's loss: in-batch softmax cross-entropy over the global batch.

What is computed (FlagEmbedding's BiEncoderModel):
- scores = q [B, D] x p [B*G, D]^T / temperature over the GLOBAL batch (every device's passages
  are negatives for every query), and the target of query i is passage i*G (its positive);
- passages marked invalid (a query with fewer than G-1 negatives, retromae_jax/data/pairs.py)
  are left out of every query's softmax;
- a batch whose dataset turns in-batch negatives off (`in_batch_negatives` False, data/mixture.py)
  restricts each query's softmax to its own group (FlagEmbedding's `no_in_batch_neg`).
Distillation (spec.kd_weight > 0): FlagEmbedding's `kd_loss_type='kl_div'` term, added to the
cross-entropy: -mean_i sum_j t_ij log softmax_j(s_ij) over query i's OWN group j = 1..G, with
s_ij = q_i.p_ij / temperature (the student's training scores) and t_i = softmax(teacher_i /
kd_temperature) (FlagEmbedding: kd_temperature 1, the teacher's raw scores). It is the KL
divergence KL(t || softmax(s)) plus the teacher's entropy, a constant: same gradients.
Matryoshka (spec.matryoshka_dims): the whole loss (cross-entropy and distillation) is summed,
with spec.matryoshka_weights (default 1 each), over the prefixes q[:, :d], p[:, :d] of every d,
re-normalised for cosine similarity (sentence-transformers' MatryoshkaLoss).
The loss is written on global arrays: under jit with sharded inputs, GSPMD decides where the
[B, B*G] product runs and gathers what it needs; there are no hand-written collectives.
Dropout: every encoded sequence draws its own key, fold_in(key, row) with row its index in the
global batch (models/biencoder.py says why).
"""

import jax
import jax.numpy as jnp
import optax

from retromae_jax.models import pooling as pooling_lib
from retromae_jax.models.biencoder import Spec, represent

_QUERY, _PASSAGE = 0, 1  # dropout streams


def contrastive_loss(q, p, temperature: float, passage_valid=None, in_batch_negatives=None):
  """In-batch softmax cross-entropy of q [B, D] against p [B*G, D]; target of query i is i*G.

  `passage_valid` [B*G] (bool) drops passages from every softmax; `in_batch_negatives` [B]
  (bool) False keeps only query i's own group in its softmax. Returns (loss, aux) with aux
  {'accuracy': fraction of queries whose positive scores highest}.
  """
  num_queries, num_passages = q.shape[0], p.shape[0]
  if num_passages % num_queries:
    raise ValueError(f"contrastive_loss: {num_passages} passages for {num_queries} queries")
  group_size = num_passages // num_queries
  scores = jnp.einsum("qd,pd->qp", q.astype(jnp.float32), p.astype(jnp.float32)) / temperature
  if passage_valid is not None:
    scores = jnp.where(passage_valid[None, :], scores, -jnp.inf)
  if in_batch_negatives is not None:
    own_group = jnp.arange(num_passages)[None, :] // group_size == jnp.arange(num_queries)[:, None]
    scores = jnp.where(in_batch_negatives[:, None] | own_group, scores, -jnp.inf)
  targets = jnp.arange(num_queries) * group_size
  loss = optax.softmax_cross_entropy_with_integer_labels(scores, targets).mean()
  accuracy = (jnp.argmax(scores, axis=-1) == targets).mean()
  return loss, {"accuracy": accuracy}


def distill_loss(q, p, temperature: float, teacher_scores, kd_temperature: float = 1.0,
                 passage_valid=None):
  """FlagEmbedding's 'kl_div' term (module docstring) of q [B, D], p [B*G, D] and the teacher's
  scores [B, G] of each query's group; invalid passages [B*G] leave both distributions."""
  num_queries = q.shape[0]
  groups = p.reshape(num_queries, -1, p.shape[-1]).astype(jnp.float32)
  student = jnp.einsum("qd,qgd->qg", q.astype(jnp.float32), groups) / temperature
  teacher = teacher_scores.astype(jnp.float32) / kd_temperature
  valid = (jnp.ones(student.shape, bool) if passage_valid is None
           else passage_valid.reshape(student.shape))
  log_student = jax.nn.log_softmax(jnp.where(valid, student, -jnp.inf), axis=-1)
  targets = jax.nn.softmax(jnp.where(valid, teacher, -jnp.inf), axis=-1)
  return -jnp.where(valid, targets * log_student, 0.0).sum(-1).mean()


def loss_targets(batch: dict) -> dict:
  """What the loss reads from a batch besides the vectors: passage_valid [B*G], and, where the
  batch has them, in_batch_negatives [B] and teacher_scores [B, G]."""
  b, g = batch["passage_valid"].shape
  return {"passage_valid": batch["passage_valid"].reshape(b * g),
          "in_batch_negatives": batch.get("in_batch_negatives"),
          "teacher_scores": batch.get("teacher_scores")}


def _prefix(x, dim: int, normalize: bool):
  x = x[:, :dim]
  return pooling_lib.l2_normalize(x) if normalize else x


def objective(spec: Spec, q, p, targets: dict):
  """(loss, aux) of the sentence vectors q [B, D], p [B*G, D]: the cross-entropy, plus the
  distillation term (spec.kd_weight), over the Matryoshka prefixes (spec.matryoshka_dims).
  aux: 'accuracy' of the full vectors, 'kd_loss' (the full vectors' term) with distillation."""
  full = q.shape[-1]
  dims = tuple(spec.matryoshka_dims) or (full,)
  weights = tuple(spec.matryoshka_weights) or (1.0,) * len(dims)
  normalize = spec.similarity == "cosine" and bool(spec.matryoshka_dims)
  valid, in_batch = targets["passage_valid"], targets["in_batch_negatives"]
  total, aux = 0.0, {}
  for dim, weight in zip(dims, weights):
    qd, pd = _prefix(q, dim, normalize), _prefix(p, dim, normalize)
    loss, dim_aux = contrastive_loss(qd, pd, spec.temperature, valid, in_batch)
    if spec.kd_weight:
      kd = distill_loss(qd, pd, spec.temperature, targets["teacher_scores"], spec.kd_temperature,
                        valid)
      loss = loss + spec.kd_weight * kd
      dim_aux["kd_loss"] = kd
    total = total + weight * loss
    if dim == full or not aux:
      aux = dim_aux
  if full not in dims:  # the full vector's accuracy, for the logs (not in the loss)
    aux["accuracy"] = contrastive_loss(q, p, spec.temperature, valid, in_batch)[1]["accuracy"]
  return total, aux


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
  queries, passages, _ = flat_inputs(batch, dropout_key)
  q = represent(spec, params, *queries)
  p = represent(spec, params, *passages)
  return objective(spec, q, p, loss_targets(batch))
