"""The divergence guard: a step whose loss or gradient norm is not finite stops the run there, with
one line naming the step and the newest checkpoint (all finite); nothing non-finite is saved.

Two pieces:
  keep_if_finite(new_state, old_state, metrics)   inside the jitted step, when
      config.divergence.skip_steps > 0: a non-finite step leaves parameters and optimizer state as
      they were (the step counter still advances: data and dropout follow the step) and reports
      metrics['skipped'] = 1.
  Guard(config.divergence, mngr)   on the host: observe(step, metrics) after every step, check()
      before every save and at the end; raises Diverged at the first non-finite step, or, when
      skipping, once more than skip_steps steps were skipped.

observe reads step N-1's two scalars while step N runs (the host stays one step ahead, so the
device never waits for it), and at the same step on every process (they all stop together).
"""

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging


class Diverged(RuntimeError):
  """The loss or the gradient norm stopped being finite."""


def keep_if_finite(new_state, old_state, metrics: dict):
  """(state, metrics): new_state if its step's loss and gradient norm are finite, else
  old_state's parameters and optimizer state at new_state's step; metrics gain 'skipped'."""
  finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
  keep = lambda new, old: jnp.where(finite, new, old)
  state = new_state.replace(params=jax.tree.map(keep, new_state.params, old_state.params),
                            opt_state=jax.tree.map(keep, new_state.opt_state,
                                                   old_state.opt_state))
  return state, {**metrics, "skipped": (~finite).astype(jnp.int32)}


class Guard:
  """Host side of the guard (module docstring). `mngr`: the run's checkpoint manager, to name the
  newest checkpoint when the run stops."""

  def __init__(self, divergence_config, mngr):
    self.skip_steps = divergence_config.skip_steps
    self.skipped = 0
    self._mngr = mngr
    self._pending = None  # (step, loss, grad_norm) of the last step, not yet read

  def observe(self, step: int, metrics: dict) -> None:
    """Records step `step`'s metrics and checks the step before it."""
    previous, self._pending = self._pending, (step, metrics["loss"], metrics["grad_norm"])
    if previous is not None:
      self._check(*previous)

  def check(self) -> None:
    """Checks the last observed step (waits for it): call before a save and at the end."""
    previous, self._pending = self._pending, None
    if previous is not None:
      self._check(*previous)

  def _check(self, step, loss, grad_norm) -> None:
    loss, grad_norm = (float(x) for x in jax.device_get((loss, grad_norm)))
    if np.isfinite(loss) and np.isfinite(grad_norm):
      return
    if self.skipped < self.skip_steps:
      self.skipped += 1
      logging.warning("step %d: loss %g, gradient norm %g (not finite): update skipped, %d of "
                      "the %d allowed (config.divergence.skip_steps)", step, loss, grad_norm,
                      self.skipped, self.skip_steps)
      return
    raise Diverged(f"step {step}: loss {loss:g}, gradient norm {grad_norm:g} (not finite): the "
                   f"run diverged and stopped{self._skipped_note()}; {self._last_checkpoint()}")

  def _skipped_note(self) -> str:
    return f" after skipping {self.skipped} such steps" if self.skip_steps else ""

  def _last_checkpoint(self) -> str:
    # Every save is preceded by check(), so every checkpoint on disk is finite.
    step = self._mngr.latest_step()
    if step is None:
      return "no checkpoint was saved yet"
    return (f"the newest checkpoint, all finite, is {self._mngr.directory}/{step} (resume from it "
            "with a lower optim.learning_rate)")
