"""Contrastive fine-tuning's computation: the bi-encoder, the in-batch loss, the gradient cache.

What is computed (../shared/spec/retromae.md section 5, FlagEmbedding's BiEncoderModel):
- one shared BertModel encodes queries and passages; the sentence vector is the [CLS] hidden
  state (or the mean over real tokens), L2-normalised for `cosine` similarity;
- scores = q [B, D] x p [B*G, D]^T / temperature over the GLOBAL batch (every device's passages
  are negatives for every query), and the target of query i is passage i*G (its positive);
- passages marked invalid (a query with fewer than G-1 negatives, retromae_jax/data/pairs.py)
  are left out of every query's softmax.
The loss is written on global arrays: under jit with sharded inputs, GSPMD decides where the
[B, B*G] product runs and gathers what it needs; there are no hand-written collectives.

Dropout: every encoded sequence draws its own key, fold_in(key, row) with row its index in the
global batch, and is encoded as if alone (a vmap over rows). An encoded row therefore depends
only on its tokens, its key and the parameters: not on the mesh, nor on how the gradient cache
splits the batch, so the cached and the plain step compute the same function.

Gradient cache (Gao et al. 2021, "Scaling deep contrastive learning batch size under memory
limited setup"): encode every chunk without keeping activations, take the loss and its gradient
with respect to the representations, then re-encode chunk by chunk under jax.vjp and accumulate
the parameter gradients. Memory holds one chunk's activations; the compute is one extra forward.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from retromae_jax.evaluators import embed as encode
from retromae_jax.models.bert import BertModel, ModelConfig

SIMILARITIES = ("cosine", "dot")
# FlagEmbedding/BGE: cosine with temperature 0.02; the RetroMAE repository: raw dot, 1.0.
DEFAULT_TEMPERATURE = {"cosine": 0.02, "dot": 1.0}
_QUERY, _PASSAGE = 0, 1  # dropout streams


class BiEncoder(nn.Module):
  """The shared encoder alone: parameters {'bert': ...}, HF BertModel-compatible."""
  cfg: ModelConfig

  def setup(self):
    self.bert = BertModel(self.cfg)

  def __call__(self, batch: dict, deterministic: bool = True):
    """Last hidden states [N, L, D] of batch['input_ids'] / batch['attention_mask'] ([N, L])."""
    return self.bert(batch["input_ids"], batch["attention_mask"], deterministic)


@dataclasses.dataclass(frozen=True)
class Spec:
  """Static choices of the contrastive model (hashable: a jit-static argument)."""
  cfg: ModelConfig
  pooling: str = "cls"  # encode.POOLINGS
  similarity: str = "cosine"  # SIMILARITIES
  temperature: float = 0.02
  # The logical axis rules of the mesh the step runs on; None: no sharding constraints.
  rules: Any = None

  def __post_init__(self):
    if self.pooling not in encode.POOLINGS:
      raise ValueError(f"pooling: expected one of {encode.POOLINGS}, got {self.pooling!r}")
    if self.similarity not in SIMILARITIES:
      raise ValueError(f"similarity: expected one of {SIMILARITIES}, got {self.similarity!r}")
    if not self.temperature > 0:
      raise ValueError(f"temperature: expected > 0, got {self.temperature}")


def _row_rules(rules):
  """The rules for one row encoded alone, and the mesh axes the rows are split over.

  Inside the vmap over rows, the model sees a batch of 1: its `batch` axis must stay unsharded,
  and the mesh axes that `batch` takes in the full batch are not free for other activation axes
  either (in the full batch they are taken first, so e.g. `embed` -> fsdp never applies to
  activations). vmap's spmd_axis_name then puts the rows back on those mesh axes.
  """
  if rules is None:
    return None, None
  table = dict(rules)
  batch_axes = table.get("batch")
  batch_axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes or ())

  def free(axes):
    if axes is None:
      return None
    kept = tuple(a for a in ((axes,) if isinstance(axes, str) else axes) if a not in batch_axes)
    return kept[0] if len(kept) == 1 else (kept or None)

  row_rules = tuple((name, None if name == "batch" else free(axes)) for name, axes in rules)
  return row_rules, (batch_axes or None)


def represent(spec: Spec, params: dict, input_ids, attention_mask, keys=None):
  """Sentence vectors [N, D] (float32) of N sequences [N, L]; `keys` [N] dropout keys or None.

  Row i depends only on (input_ids[i], attention_mask[i], keys[i]) and the parameters.
  """
  model = BiEncoder(spec.cfg)
  normalize = spec.similarity == "cosine"
  row_rules, row_axes = _row_rules(spec.rules)

  def one(ids, mask, key):
    rngs = {} if key is None else {"dropout": key}
    hidden = model.apply({"params": params}, {"input_ids": ids[None], "attention_mask": mask[None]},
                         deterministic=key is None, rngs=rngs)
    return encode.pool(hidden.astype(jnp.float32), mask[None], spec.pooling, normalize)[0]

  def rows(ids, mask, row_keys):
    if row_keys is None:
      return jax.vmap(lambda i, m: one(i, m, None), spmd_axis_name=row_axes)(ids, mask)
    return jax.vmap(one, spmd_axis_name=row_axes)(ids, mask, row_keys)

  if row_rules is None:
    return rows(input_ids, attention_mask, keys)
  with nn.logical_axis_rules(row_rules):
    return rows(input_ids, attention_mask, keys)


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


def _flat_inputs(batch: dict, dropout_key):
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
  queries, passages, valid = _flat_inputs(batch, dropout_key)
  q = represent(spec, params, *queries)
  p = represent(spec, params, *passages)
  return contrastive_loss(q, p, spec.temperature, valid)


def _chunked(x, chunks: int):
  """[N, ...] -> [chunks, N/chunks, ...]; chunk j holds rows j, j+chunks, ...: with the rows split
  over devices in contiguous blocks, every chunk is spread over all of them."""
  return x.reshape(x.shape[0] // chunks, chunks, *x.shape[1:]).swapaxes(0, 1)


def _unchunked(x):
  return x.swapaxes(0, 1).reshape(-1, *x.shape[2:])


def cached_value_and_grad(spec: Spec, params: dict, batch: dict, dropout_key, chunk_size: int):
  """((loss, aux), grads) as jax.value_and_grad(loss_fn), holding one chunk of `chunk_size` rows
  of activations at a time (the gradient cache)."""
  queries, passages, valid = _flat_inputs(batch, dropout_key)
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
  (loss, aux), (grad_q, grad_p) = jax.value_and_grad(
      lambda q, p: contrastive_loss(q, p, spec.temperature, valid), argnums=(0, 1),
      has_aux=True)(q, p)

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
