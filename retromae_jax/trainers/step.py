"""A training step as `python -m retromae_jax.main` runs it, before anything is allocated.

pretrain.build_step and finetune.build_step return a Step; train_and_evaluate initialises its
state and compiles it for this run's devices, and tools/compile.py compiles the very same step
for a TPU topology's devices (abstract inputs: nothing runs, no TPU needed).
"""

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax

from retromae_jax.trainers import anchor as anchor_lib
from retromae_jax.trainers import train_state


@dataclasses.dataclass(frozen=True)
class Step:
  """The update step with everything needed to compile it.

  `knob` is the static argument of update_step that trades memory for time without changing the
  loss ('accum_steps': microbatches; 'chunk_size': gradient-cache chunks), `setting` its
  configured value, `settings` every value that divides the batch, from the fastest (most
  memory) to the leanest, and smaller(needed_bytes, available_bytes) the one to try when
  `setting` does not fit. `anchored`: the step also takes the starting encoder (config.anchor).
  """
  update_step: Callable  # (state, batch, **{knob: value}) -> (state, metrics)
  state: Any  # the TrainState's jax.ShapeDtypeStructs
  state_shardings: Any
  init_state: Callable  # rng -> TrainState, to jit into state_shardings
  batch: dict  # the global batch's jax.ShapeDtypeStructs
  batch_sharding: dict
  mesh: Any
  rules: Any
  knob: str
  setting: int
  settings: tuple
  smaller: Callable
  describe: Callable  # setting -> words for the log
  model_flops: float  # analytic matmul FLOPs of one step, whole batch (trainers/flops.py)
  anchored: bool = False

  def init(self, seed: int):
    """The state, initialised directly into its shardings (no full copy on any one device)."""
    return train_state.init_sharded(self.init_state, self.state_shardings, self.mesh, self.rules,
                                    seed)

  def jaxpr(self, setting):
    """The jaxpr of what compile(setting) compiles (with the anchor: the paired step)."""
    fn, state = functools.partial(self.update_step, **{self.knob: setting}), self.state
    if self.anchored:
      fn, state, _ = anchor_lib.paired(fn, state, self.state_shardings)
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      return jax.make_jaxpr(fn)(state, self.batch)

  def compile(self, setting):
    """(compiled step, bytes per device it needs) with the knob at `setting`."""
    compile_ahead = anchor_lib.compile_ahead if self.anchored else train_state.compile_ahead
    return compile_ahead(
        functools.partial(self.update_step, **{self.knob: setting}), self.state,
        self.state_shardings, self.batch, self.batch_sharding, self.mesh, self.rules,
        self.describe(setting))
