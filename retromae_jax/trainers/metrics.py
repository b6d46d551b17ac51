"""Training metrics: one JSON object per logged step in <workdir>/metrics.jsonl, the same scalars
to TensorBoard, and a human progress line. Only process 0 writes."""

import datetime
import json
import os
import time

from absl import logging
import jax
import numpy as np
import tensorboardX


class MetricsWriter:

  def __init__(self, workdir: str, total_steps: int, resume_step: int | None = None):
    """`resume_step`: drop the lines of steps after it (logged, then lost with the process,
    before a checkpoint saved them), so that the resumed run's lines replace them."""
    self.total_steps = total_steps
    self.enabled = jax.process_index() == 0
    self._jsonl = None
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      path = os.path.join(workdir, "metrics.jsonl")
      if resume_step is not None and os.path.exists(path):
        _truncate_after(path, resume_step)
      self._jsonl = open(path, "a", encoding="utf-8")
      self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, scalars: dict):
    if not self.enabled:
      return
    record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    for name, value in scalars.items():
      self._tb.add_scalar(name, value, step)
    self._tb.flush()

  def progress(self, step: int, steps_per_s: float, scalars: dict):
    if not self.enabled:
      return
    left = (self.total_steps - step) / steps_per_s if steps_per_s > 0 else float("nan")
    eta = str(datetime.timedelta(seconds=int(left))) if left == left else "?"
    # Only the objective's own terms: the MLM baseline has no decoder, drop no encoder loss.
    terms = ", ".join(f"{t} {scalars[t + '_loss']:.4f}" for t in ("enc", "dec", "bow")
                      if t + "_loss" in scalars)
    accs = " ".join(f"{t} {scalars[t + '_acc']:.3f}" for t in ("enc", "dec")
                    if t + "_acc" in scalars)
    logging.info(
        "step %d/%d | loss %.4f (%s) | acc %s | lr %.2e | %.2f steps/s | %.0f tok/s | "
        "MFU %.1f%% | ETA %s", step, self.total_steps, scalars["loss"], terms, accs,
        scalars["lr"], steps_per_s, scalars["tokens_per_s"],
        100 * scalars.get("mfu", float("nan")), eta)

  def close(self):
    if self._jsonl:
      self._jsonl.close()
      self._tb.close()


def _truncate_after(path: str, step: int) -> None:
  with open(path, encoding="utf-8") as f:
    lines = f.readlines()
  # A line cut short by a kill mid-write is dropped with the rest.
  kept = [line for line in lines if line.endswith("\n") and json.loads(line)["step"] <= step]
  if len(kept) != len(lines):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(kept)
    os.replace(tmp, path)


def window_scalars(window: list, seconds: float) -> dict:
  """What a logged line holds for a window of steps (their per-step metrics, still on device):
  the means, the last learning rate, and the throughput in real tokens and steps per second."""
  window = jax.device_get(window)
  scalars = {k: float(np.mean([m[k] for m in window])) for k in window[0]
             if k not in ("tokens", "lr")}
  scalars["lr"] = float(window[-1]["lr"])
  scalars["tokens_per_s"] = float(sum(m["tokens"] for m in window)) / seconds
  scalars["steps_per_s"] = len(window) / seconds
  return scalars


class Stopwatch:
  """Wall time over a window of steps; restarted after the first (compiling) step."""

  def __init__(self):
    self.reset()

  def reset(self):
    self.start = time.perf_counter()

  def elapsed(self) -> float:
    return time.perf_counter() - self.start
