"""The training state and how it is created on a mesh: shared by pretraining (pretrain.py) and
fine-tuning (finetune.py)."""

import os

from absl import logging
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from retromae_jax.trainers import sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  opt_state: optax.OptState


def _masked(x) -> bool:
  """A parameter another group of optax.partition / multi_transform owns (trainers/optim.py)."""
  return isinstance(x, optax.MaskedNode)


def abstract_sharded_state(model, tx, example: dict, mesh, rules):
  """(abstract state, state_shardings, init_state): the TrainState's shapes and dtypes (nothing
  is allocated), where each leaf lives, and init_state(rng) -> TrainState to jit into them.

  The parameters' shardings come from their logical axis names through `rules`; optimizer
  moments follow the parameter they belong to; scalars are replicated.
  """
  def init_variables(rng):
    zeros = {k: jnp.zeros(v.shape, v.dtype) for k, v in example.items()}
    return model.init({"params": rng, "dropout": rng}, zeros, deterministic=True)

  def init_state(rng):
    params = nn.unbox(init_variables(rng)["params"])
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  # Made outside the mesh: a TPU topology's mesh (tools/compile.py) has no device to hold it.
  rng = jax.random.key(0)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(init_variables, rng)
    param_shardings = nn.logical_to_mesh_sharding(
        nn.get_partition_spec(boxed)["params"], mesh, rules)
    abstract_state = jax.eval_shape(init_state, rng)
    sharding.check_divisible(abstract_state.params, param_shardings,
                             nn.get_partition_spec(boxed)["params"])
  # Outside the mesh too: tree_map_params runs tx.init eagerly on placeholders.
  state_shardings = TrainState(
      step=sharding.replicated(mesh), params=param_shardings,
      opt_state=optax.tree_map_params(
          tx, lambda x, s: x if _masked(x) else s, abstract_state.opt_state, param_shardings,
          transform_non_params=lambda _: sharding.replicated(mesh), is_leaf=_masked))
  return abstract_state, state_shardings, init_state


def init_sharded(init_state, state_shardings, mesh, rules, seed: int):
  """init_state(key(seed)) computed directly into its shardings (no full copy on any one
  device)."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    return jax.jit(init_state, out_shardings=state_shardings)(jax.random.key(seed))


def create_sharded_state(model, tx, example: dict, mesh, rules, seed: int):
  """Initialises the TrainState directly into its shardings. Returns (state, state_shardings)."""
  _, state_shardings, init_state = abstract_sharded_state(model, tx, example, mesh, rules)
  return init_sharded(init_state, state_shardings, mesh, rules, seed), state_shardings


def device_memory_bytes() -> int:
  """Memory one device may use: its own (accelerators), or its share of 80% of the host's RAM
  (CPU devices share it with each other and with the input pipeline). 0 = unknown."""
  device = jax.local_devices()[0]
  if device.platform == "cpu":
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(0.8 * ram / jax.local_device_count())
  stats = device.memory_stats() or {}
  return int(stats.get("bytes_limit", 0))


def compile_ahead(step_fn, state, state_shardings, global_example, batch_sharding, mesh, rules,
                  what: str):
  """The jitted update step, compiled before the loop (donated state, replicated metrics), and
  the bytes per device it needs (arguments + temporaries; 0 = unknown), logged with `what`: the
  memory is known before the first step, so a caller can re-split a step that would not fit."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    compiled = jax.jit(
        step_fn, in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=(0,),
    ).lower(state, global_example).compile()
  memory = compiled.memory_analysis()
  if not memory:
    return compiled, 0
  logging.info("Compiled step per device (%s): arguments %.1f MiB, outputs %.1f MiB, "
               "temporaries %.1f MiB", what, memory.argument_size_in_bytes / 2**20,
               memory.output_size_in_bytes / 2**20, memory.temp_size_in_bytes / 2**20)
  return compiled, memory.argument_size_in_bytes + memory.temp_size_in_bytes
