"""The optimizer, entirely from config.optim: AdamW with warmup then linear decay, no weight decay
on biases and LayerNorm parameters (as BERT/RetroMAE's `no_decay` lists), global-norm clipping."""

import jax
import optax


def learning_rate_schedule(optim_config, total_steps: int) -> optax.Schedule:
  warmup = int(round(optim_config.warmup_ratio * total_steps))
  return optax.join_schedules(
      [optax.linear_schedule(0.0, optim_config.learning_rate, max(warmup, 1)),
       optax.linear_schedule(optim_config.learning_rate, 0.0, max(total_steps - warmup, 1))],
      boundaries=[warmup])


def decay_mask(params):
  """True for parameters that get weight decay: kernels and embeddings, not biases/LN scales."""
  def decays(path, _):
    return path[-1].key not in ("bias", "scale")
  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(optim_config, total_steps: int):
  """Returns (optax transformation, learning-rate schedule)."""
  schedule = learning_rate_schedule(optim_config, total_steps)
  tx = optax.chain(
      optax.clip_by_global_norm(optim_config.grad_clip_norm),
      optax.adamw(schedule, b1=optim_config.b1, b2=optim_config.b2, eps=optim_config.eps,
                  weight_decay=optim_config.weight_decay, mask=decay_mask))
  return tx, schedule
