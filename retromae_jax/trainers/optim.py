"""The optimizer, entirely from config.optim: AdamW with warmup then linear decay, no weight decay
on biases and LayerNorm parameters (as BERT/RetroMAE's `no_decay` lists), global-norm clipping.

Warm-up of the new parts (optim.freeze_encoder_steps, optim.encoder_learning_rate): when training
starts from a checkpoint that lacks some top-level parts (an MLM head, the decoder), gradients
from those random parts would first push noise into the trained encoder. So the parameters fall
in two groups by what the checkpoint provided:
- 'new'      : the parts it did not provide; the usual schedule over all total_steps;
- 'provided' : the rest (the encoder, and its MLM head when the checkpoint had one); for the first
               freeze_encoder_steps steps their updates are zero and their Adam state does not
               move, then they train with their own warmup-and-decay schedule over the remaining
               steps, peaking at encoder_learning_rate (0 = learning_rate).
Frozen gradients are zeroed before the global-norm clip, so they do not shrink the new parts'.
Everything is a function of the optimizer's step counters (in the checkpointed state): a resumed
run continues the same schedule.
"""

import jax
import jax.numpy as jnp
import optax
from optax import transforms

NEW, PROVIDED = "new", "provided"


def learning_rate_schedule(optim_config, total_steps: int, peak: float | None = None
                           ) -> optax.Schedule:
  peak = optim_config.learning_rate if peak is None else peak
  warmup = int(round(optim_config.warmup_ratio * total_steps))
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, max(warmup, 1)),
       optax.linear_schedule(peak, 0.0, max(total_steps - warmup, 1))],
      boundaries=[warmup])


def decay_mask(params):
  """True for parameters that get weight decay: kernels and embeddings, not biases/LN scales."""
  def decays(path, _):
    return path[-1].key not in ("bias", "scale")
  return jax.tree_util.tree_map_with_path(decays, params)


def _adamw(optim_config, schedule):
  return optax.adamw(schedule, b1=optim_config.b1, b2=optim_config.b2, eps=optim_config.eps,
                     weight_decay=optim_config.weight_decay, mask=decay_mask)


def has_groups(optim_config) -> bool:
  """Whether the provided and the new parts train differently (else one plain AdamW)."""
  return bool(optim_config.freeze_encoder_steps
              or optim_config.encoder_learning_rate)


def param_labels(new_parts):
  """params -> the same tree of NEW / PROVIDED, by top-level key."""
  new_parts = frozenset(new_parts)

  def labels(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: NEW if path[0].key in new_parts else PROVIDED, params)
  return labels


def encoder_schedule(optim_config, total_steps: int) -> optax.Schedule:
  """The provided parts' learning rate as a function of the global step (0 while frozen)."""
  freeze = optim_config.freeze_encoder_steps
  peak = optim_config.encoder_learning_rate or optim_config.learning_rate
  after = learning_rate_schedule(optim_config, total_steps - freeze, peak)
  return lambda step: jnp.where(step < freeze, 0.0, after(jnp.maximum(step - freeze, 0)))


def make_optimizer(optim_config, total_steps: int, new_parts=None):
  """Returns (optax transformation, learning-rate schedule of the new parts).

  new_parts: the top-level parameter keys the initial checkpoint did not provide (see
  retromae_jax/trainers/init_parts.py); needed only with freeze_encoder_steps or
  encoder_learning_rate set, which otherwise leave the optimizer a single AdamW.
  """
  schedule = learning_rate_schedule(optim_config, total_steps)
  clip = optax.clip_by_global_norm(optim_config.grad_clip_norm)
  if not has_groups(optim_config):
    return optax.chain(clip, _adamw(optim_config, schedule)), schedule
  freeze = optim_config.freeze_encoder_steps
  if new_parts is None:
    raise ValueError("optim.freeze_encoder_steps / optim.encoder_learning_rate: this program "
                     "does not tell new parts from provided ones; set both to 0")
  if freeze and not new_parts:
    raise ValueError(f"optim.freeze_encoder_steps: {freeze}, but the initial checkpoint provides "
                     "every part: nothing would train during the freeze; set it to 0")
  labels = param_labels(new_parts)
  unfrozen = lambda count: count >= freeze
  # The provided group's own step counter (inside conditionally_mask) only advances once it is
  # unfrozen, so its schedule starts its warmup at step `freeze`.
  peak = optim_config.encoder_learning_rate or optim_config.learning_rate
  provided_schedule = learning_rate_schedule(optim_config, total_steps - freeze, peak)
  tx = optax.chain(
      optax.multi_transform({PROVIDED: transforms.conditionally_mask(optax.identity(), unfrozen),
                             NEW: optax.identity()}, labels),
      clip,
      optax.multi_transform(
          {PROVIDED: transforms.conditionally_mask(_adamw(optim_config, provided_schedule),
                                                   unfrozen),
           NEW: _adamw(optim_config, schedule)}, labels))
  return tx, schedule
