"""Token-level cross-entropy and accuracy over labelled positions (label -100 = ignored).

The mean is over the labelled tokens of the whole (global) batch, as HF's CrossEntropyLoss with
ignore_index=-100 computes it: under jit on a sharded batch the sums are global. With gradient
accumulation each microbatch divides by the WHOLE batch's token count (`denominator`), so that
the microbatch losses and gradients add up to exactly the full batch's.
"""

import jax.numpy as jnp
import optax

IGNORE = -100


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


def retromae_loss(encoder_logits, decoder_logits, batch, denominators=(None, None)):
  """L = L_enc + L_dec (equal weights, spec section 2); both parts are returned for logging."""
  enc_loss, enc_acc, enc_tokens = masked_cross_entropy(
      encoder_logits, batch["encoder_targets"], denominators[0])
  dec_loss, dec_acc, dec_tokens = masked_cross_entropy(
      decoder_logits, batch["decoder_targets"], denominators[1])
  metrics = dict(enc_loss=enc_loss, dec_loss=dec_loss, enc_acc=enc_acc, dec_acc=dec_acc,
                 enc_tokens=enc_tokens, dec_tokens=dec_tokens)
  return enc_loss + dec_loss, metrics
