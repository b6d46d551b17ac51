"""Token-level cross-entropy and accuracy over labelled positions (label -100 = ignored), DupMAE's
bag-of-words loss, and the objective's total.

The mean is over the labelled tokens of the whole (global) batch, as HF's CrossEntropyLoss with
ignore_index=-100 computes it: under jit on a sharded batch the sums are global. With gradient
accumulation each microbatch divides by the WHOLE batch's token count (`denominator`), so that
the microbatch losses and gradients add up to exactly the full batch's.
"""

import jax
import jax.numpy as jnp
import optax

from retromae_jax.objectives.contract import IGNORE


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


def bag_of_words_loss(bow_logits, input_ids, bow_weights, denominator=None):
  """DupMAE's L_bow (DupMAE), mean over examples.

  bow_logits [B, V]: the encoder's MLM logits max-pooled over positions 1..L-1
  (objectives/mlm.bag_of_words_pool); bow_weights [B, L]: 1/len(text ids) at one position per
  distinct non-special id of the text (objectives/bag_of_words/host.py), so that
  -sum_j w_j log_softmax(bow_logits)[x_j] = -sum over the text's id set of log p(id) / len.
  `denominator` (default: this batch's examples) is what the sum over examples is divided by.
  """
  log_probs = jax.nn.log_softmax(bow_logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_probs, input_ids, axis=1)  # [B, L]
  per_example = -(bow_weights * picked).sum(axis=-1)
  denom = input_ids.shape[0] if denominator is None else denominator
  return per_example.sum() / jnp.asarray(denom, jnp.float32)


def loss_denominators(batch) -> dict:
  """What each loss term of the WHOLE batch divides by (gradient accumulation passes these to
  every microbatch): labelled tokens for L_enc and L_dec, examples for L_bow."""
  out = {"bow": batch["input_ids"].shape[0]}
  for term, targets in (("enc", "encoder_targets"), ("dec", "decoder_targets")):
    if targets in batch:
      out[term] = labelled_tokens(batch[targets])
  return out


def objective_loss(outputs, batch, bow_weight: float = 0.0, denominators=None):
  """L = L_enc + L_dec + bow_weight * L_bow over the terms the objective has; each term logged.

  outputs: the model's `outputs` (encoder_logits, decoder_logits, bow_logits, where present).
  """
  denominators = denominators or {}
  terms, metrics = [], {}
  for term, logits, targets in (("enc", "encoder_logits", "encoder_targets"),
                                ("dec", "decoder_logits", "decoder_targets")):
    if logits in outputs:
      loss, acc, count = masked_cross_entropy(outputs[logits], batch[targets],
                                              denominators.get(term))
      terms.append(loss)
      metrics.update({f"{term}_loss": loss, f"{term}_acc": acc, f"{term}_tokens": count})
  if "bow_logits" in outputs:
    bow = bag_of_words_loss(outputs["bow_logits"], batch["input_ids"], batch["bow_weights"],
                            denominators.get("bow"))
    terms.append(bow_weight * bow)
    metrics["bow_loss"] = bow
  return sum(terms[1:], terms[0]), metrics
