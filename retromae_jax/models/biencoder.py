"""The bi-encoder of contrastive fine-tuning, and the sentence vectors it gives (`represent`).

What is computed (FlagEmbedding's BiEncoderModel): one shared BertModel encodes queries and
passages; the sentence vector is the [CLS] hidden state (or the mean over real tokens),
L2-normalised for `cosine` similarity. The in-batch loss: models/contrastive_loss.py; the
gradient cache: trainers/gradient_cache.py.

Dropout: every encoded sequence draws its own key (contrastive_loss.dropout_keys) and is encoded
as if alone (a vmap over rows). An encoded row therefore depends only on its tokens, its key and
the parameters: not on the mesh, nor on how the gradient cache splits the batch, so the cached
and the plain step compute the same function.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from retromae_jax.models import pooling
from retromae_jax.models.bert import BertModel, ModelConfig

SIMILARITIES = ("cosine", "dot")
# FlagEmbedding/BGE: cosine with temperature 0.02; the RetroMAE repository: raw dot, 1.0.
DEFAULT_TEMPERATURE = {"cosine": 0.02, "dot": 1.0}


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
  pooling: str = "cls"  # pooling.POOLINGS
  similarity: str = "cosine"  # SIMILARITIES
  temperature: float = 0.02
  # The logical axis rules of the mesh the step runs on; None: no sharding constraints.
  rules: Any = None
  # The loss's own choices (models/contrastive_loss.py): Matryoshka prefixes and their weights
  # (() = the full vector only), and the distillation term's weight and teacher temperature.
  matryoshka_dims: tuple = ()
  matryoshka_weights: tuple = ()
  kd_weight: float = 0.0
  kd_temperature: float = 1.0

  def __post_init__(self):
    if self.pooling not in pooling.POOLINGS:
      raise ValueError(f"pooling: expected one of {pooling.POOLINGS}, got {self.pooling!r}")
    if self.similarity not in SIMILARITIES:
      raise ValueError(f"similarity: expected one of {SIMILARITIES}, got {self.similarity!r}")
    if not self.temperature > 0:
      raise ValueError(f"temperature: expected > 0, got {self.temperature}")
    if self.matryoshka_weights and len(self.matryoshka_weights) != len(self.matryoshka_dims):
      raise ValueError(f"matryoshka_weights: {len(self.matryoshka_weights)} weights for "
                       f"{len(self.matryoshka_dims)} matryoshka_dims")


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
    return pooling.pool(hidden.astype(jnp.float32), mask[None], spec.pooling, normalize)[0]

  def rows(ids, mask, row_keys):
    if row_keys is None:
      return jax.vmap(lambda i, m: one(i, m, None), spmd_axis_name=row_axes)(ids, mask)
    return jax.vmap(one, spmd_axis_name=row_axes)(ids, mask, row_keys)

  if row_rules is None:
    return rows(input_ids, attention_mask, keys)
  with nn.logical_axis_rules(row_rules):
    return rows(input_ids, attention_mask, keys)
