"""The objective's loss: the sum of the loss terms its parts declare (contract.LossTerm), each
a token-level cross-entropy with accuracy over labelled positions (label -100 = ignored) unless
the term names its own function (DupMAE's bag of words: bag_of_words/model.py).

The mean is over the labelled tokens of the whole (global) batch, as HF's CrossEntropyLoss with
ignore_index=-100 computes it: under jit on a sharded batch the sums are global. With gradient
accumulation each microbatch divides by the WHOLE batch's token count (`denominator`), so that
the microbatch losses and gradients add up to exactly the full batch's.
"""

import jax.numpy as jnp
import optax

from retromae_jax.models import vocab_loss
from retromae_jax.objectives import contract, registry
from retromae_jax.objectives.contract import IGNORE
from retromae_jax.objectives.settings import ObjectiveConfig


def labelled_tokens(labels):
  return (labels != IGNORE).sum()


def masked_cross_entropy(logits, labels, denominator=None):
  """Returns (mean loss, accuracy, number of labelled tokens) over labels != -100.

  `denominator` (default: this batch's labelled tokens) is what the sums are divided by.
  """
  valid = labels != IGNORE
  safe_labels = jnp.where(valid, labels, 0)
  token_loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                               safe_labels)
  count = valid.sum()
  denom = jnp.maximum(count if denominator is None else denominator, 1).astype(jnp.float32)
  loss = jnp.where(valid, token_loss, 0.0).sum() / denom
  correct = (logits.argmax(-1) == labels) & valid
  return loss, correct.sum() / denom, count


def chunked_cross_entropy(projection: vocab_loss.Projection, labels, denominator=None):
  """masked_cross_entropy of the logits a vocab_loss.Projection stands for, in blocks of
  positions (models/vocab_loss.py): the same (mean loss, accuracy, labelled tokens)."""
  loss_sum, correct, count = vocab_loss.chunked_cross_entropy(
      projection.hidden, projection.embeddings, projection.bias, labels, projection.block)
  denom = jnp.maximum(count if denominator is None else denominator, 1).astype(jnp.float32)
  return loss_sum / denom, correct / denom, count


def token_cross_entropy(logits, batch, term, denominator=None):
  """A loss term's default (contract.LossTerm.loss == ''): masked_cross_entropy of the logits
  (or of a Projection's, model.vocab_loss=chunked) against batch[term.targets]; metrics acc and
  tokens."""
  score = (chunked_cross_entropy if isinstance(logits, vocab_loss.Projection)
           else masked_cross_entropy)
  loss, accuracy, count = score(logits, batch[term.targets], denominator)
  return loss, {"acc": accuracy, "tokens": count}


def documents(batch):
  """The batch's documents: its rows, or a packed row's segments (their [CLS] tokens)."""
  if "segment_ids" in batch:
    return ((batch["positions"] == 0) & (batch["segment_ids"] > 0)).sum()
  return batch["input_ids"].shape[0]


def _loss_function(term: contract.LossTerm):
  return registry.load(term.loss) if term.loss else token_cross_entropy


def loss_denominators(batch, objective: ObjectiveConfig = ObjectiveConfig()) -> dict:
  """What each loss term of the WHOLE batch divides by (gradient accumulation passes these to
  every microbatch), by term name: its labelled targets or its documents (LossTerm.per)."""
  return {term.name: (labelled_tokens(batch[term.targets]) if term.per == contract.PER_TOKEN
                      else documents(batch))
          for term in registry.loss_terms(objective)}


def objective_loss(outputs, batch, objective: ObjectiveConfig = ObjectiveConfig(),
                   denominators=None):
  """L = sum of weight * term over the loss terms the objective's parts declare
  (registry.loss_terms; the default: L_enc + L_dec); each term logged as <name>_loss and its
  metrics <name>_<metric>.

  outputs: the model's `outputs` (every term's logits, by the name the term declares).
  """
  denominators = denominators or {}
  terms, metrics = [], {}
  for term in registry.loss_terms(objective):
    loss, term_metrics = _loss_function(term)(outputs[term.logits], batch, term,
                                              denominators.get(term.name))
    weight = term.weight(objective)
    terms.append(loss if weight == 1.0 else weight * loss)
    metrics[f"{term.name}_loss"] = loss
    metrics.update({f"{term.name}_{name}": value for name, value in term_metrics.items()})
  return sum(terms[1:], terms[0]), metrics
