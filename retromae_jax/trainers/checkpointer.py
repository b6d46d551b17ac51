"""The run's checkpointer: when to save (cadence, the last step, preemption), and what became of
the saves it started (a background save that failed stops the run at the next step boundary).

Storage (Orbax, damage checks) is retromae_jax/interop/checkpoint_store.py; this module keeps
the run's own state (the save whose outcome is not checked yet, the SIGTERM flag) on itself, not
on Orbax's manager.
"""

import contextlib
import signal
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from retromae_jax.interop import checkpoint_store as store


class PreemptionWatch:
  """Tells the loop when to save and stop: SIGTERM (a TPU maintenance event, a scheduler's stop).

  Multi-process runs use JAX's preemption service through Orbax (every process reaches the same
  sync step); a single process has no coordination service, so a SIGTERM handler sets a flag.
  """

  def __init__(self):
    self._requested = False
    if jax.process_count() == 1:
      signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame):
    del signum, frame
    self._requested = True

  def reached(self, mngr: ocp.CheckpointManager, step: int) -> bool:
    if jax.process_count() == 1:
      return self._requested
    return mngr.reached_preemption(step)


class Checkpointer:
  """Saves the run's state every `every` steps, at `last_step` and when preempted, to `mngr`
  (checkpoint_store.manager), with `meta` beside every state."""

  def __init__(self, mngr: ocp.CheckpointManager, meta: dict, *, every: int, last_step: int,
               log_every: int):
    self.mngr = mngr
    self.meta = meta
    self.every = every
    self.last_step = last_step
    self.log_every = log_every
    self._unchecked_save = None  # the step whose outcome _background_error checks once it ended
    self._preemption = None  # installed by the loop (watch_preemption): SIGTERM is the loop's

  def watch_preemption(self) -> None:
    self._preemption = PreemptionWatch()

  def save(self, step: int, state) -> bool:
    started = store.start_save(self.mngr, step, state, self.meta)
    self._unchecked_save = step
    logging.info("Checkpoint step %d: saving to %s/%d (in the background)", step,
                 self.mngr.directory, step)
    return started

  def _background_error(self) -> str | None:
    """The cause of a finished background save that failed, else None. Never blocks: a save
    still in progress is left alone."""
    step = self._unchecked_save
    if step is None or self.mngr.is_saving_in_progress():
      return None
    self._unchecked_save = None
    try:
      self.mngr.wait_until_finished()  # joins the finished finalize thread: re-raises its error
    except Exception as e:
      return store.first_line(e)
    if step not in store.steps_on_disk(self.mngr):  # Orbax may log a failed finalize silently
      return (f"step {step} was not committed (Orbax logged why: run with --third_party_logs to "
              "see it)")
    return None

  def raise_if_save_failed(self, everywhere: bool = True) -> None:
    """Raises SaveFailed if a checkpoint save failed. Call it at every step boundary.

    One process raises as soon as it sees its own error. Several processes must stop together
    (a process that stopped alone would leave the others waiting in the next collective), so
    with more than one they compare notes, at the steps where `everywhere` is True on all of
    them (the same steps on every process: the loop passes logging and saving steps).
    """
    error = self._background_error()
    if jax.process_count() > 1:
      if not everywhere:
        return
      failed = np.flatnonzero(multihost_utils.process_allgather(np.int32(error is not None)))
      if failed.size and error is None:
        error = f"process(es) {failed.tolist()} could not write their part"
    if error:
      raise store.save_failed(self.mngr, error)

  def wait_until_saved(self) -> None:
    """Waits for the save in progress; raises SaveFailed if it failed."""
    try:
      self.mngr.wait_until_finished()
    except Exception as e:
      raise store.save_failed(self.mngr, e) from e

  @contextlib.contextmanager
  def on_failure(self, timeout_s: float = 60.0):
    """Around a training loop: when it raises (divergence, bad input), the save of an earlier,
    good state still in progress completes first (finish_pending); after SaveFailed there is
    nothing left to wait for."""
    try:
      yield
    except store.SaveFailed:
      raise
    except BaseException:
      self.finish_pending(timeout_s)
      raise

  def finish_pending(self, timeout_s: float = 60.0) -> None:
    """On the way out of a failed run: lets a save in progress (of a good, finite state)
    complete, for up to `timeout_s` (a save that hangs on a broken disk must not hang the exit)."""
    deadline = time.monotonic() + timeout_s
    while self.mngr.is_saving_in_progress() and time.monotonic() < deadline:
      time.sleep(0.1)
    error = self._background_error()
    if error:
      logging.error("%s", store.save_failed(self.mngr, error))

  def save_if_due(self, step: int, state, check_state=None) -> bool:
    """Saves every `every` steps, at the last step, and when preempted (then waits until the
    save is complete); returns True when the run must stop now (preempted).

    Call it at every step boundary: it first raises SaveFailed if an earlier save failed.
    `check_state()`, called before a save, raises to refuse it (divergence.Guard.check: a
    non-finite state is never written)."""
    due = step % self.every == 0 or step == self.last_step
    self.raise_if_save_failed(everywhere=due or step % self.log_every == 0)
    preempted = self._preemption is not None and self._preemption.reached(self.mngr, step)
    if due or preempted:
      if check_state is not None:
        check_state()
      self.save(step, state)
    if preempted:
      self.wait_until_saved()
      logging.warning("Preempted: saved step %d; the same command resumes from it", step)
    return preempted
