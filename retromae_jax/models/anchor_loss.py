"""The anti-forgetting term (config anchor): keep the adapted encoder near the model it started from
on the domain's own text.

Two kinds, both against the starting model's vectors of the same texts (`teacher`, no gradient):
- 'vectors'      : the mean over texts of 1 - cos(student_i, teacher_i): each text's sentence
                   vector keeps its direction (cosine similarity reads nothing else);
- 'similarities' : the KL divergence from the starting model's in-batch similarity distribution
                   to the student's, row by row: softmax_j(cos(a_i, b_j) / t) over the batch's
                   texts b (a text is never its own candidate when a and b are the same set).
                   The geometry between texts is kept, the vectors themselves may move.
Pure functions of arrays; the trainers' glue is trainers/anchor.py.
"""

import jax
import jax.numpy as jnp

KINDS = ("vectors", "similarities")


def _unit(x):
  # rsqrt of the clamped squared norm: finite gradients at a zero vector (a packed row's
  # padding rows, weighted 0), where the norm's own gradient is 0/0.
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24))


def vector_loss(student, teacher, weights):
  """Weighted mean of 1 - cos(student_i, teacher_i); student, teacher [N, D], weights [N]."""
  cos = (_unit(student) * _unit(jax.lax.stop_gradient(teacher))).sum(-1)
  weights = weights.astype(jnp.float32)
  return ((1.0 - cos) * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def similarity_loss(student_a, student_b, teacher_a, teacher_b, valid_a, valid_b,
                    temperature: float, same_set: bool):
  """Mean over valid rows i of KL(p_teacher(i, .) || p_student(i, .)), p(i, j) = softmax over
  valid j of cos(a_i, b_j) / temperature; same_set: a and b are the same texts (the diagonal is
  left out). [N, D] / [M, D] vectors, valid masks [N] / [M]."""
  teacher_a, teacher_b = jax.lax.stop_gradient(teacher_a), jax.lax.stop_gradient(teacher_b)
  keep = valid_b.astype(bool)[None, :] & valid_a.astype(bool)[:, None]
  if same_set:
    keep &= ~jnp.eye(keep.shape[0], keep.shape[1], dtype=bool)

  def log_probs(a, b):
    logits = _unit(a) @ _unit(b).T / temperature
    return jax.nn.log_softmax(jnp.where(keep, logits, -1e9), axis=-1)

  log_t, log_s = log_probs(teacher_a, teacher_b), log_probs(student_a, student_b)
  kl = jnp.where(keep, jnp.exp(log_t) * (log_t - log_s), 0.0).sum(-1)
  rows = valid_a.astype(bool) & keep.any(-1)
  return jnp.where(rows, kl, 0.0).sum() / jnp.maximum(rows.sum(), 1)
