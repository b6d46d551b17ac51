"""Training metrics: one JSON object per logged step in <workdir>/metrics.jsonl, the same scalars
to TensorBoard, and a human progress line. Only process 0 writes."""

import datetime
import json
import os

from absl import logging
import jax
import tensorboardX

from retromae_jax.interop import workdir as workdir_layout


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
      path = os.path.join(workdir, workdir_layout.METRICS)
      if resume_step is not None and os.path.exists(path):
        _truncate_after(path, resume_step)
      self._jsonl = open(path, "a", encoding="utf-8")
      self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, workdir_layout.TENSORBOARD))

  def write(self, step: int, scalars: dict):
    if not self.enabled:
      return
    record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    for name, value in scalars.items():
      self._tb.add_scalar(name, value, step)
    self._tb.flush()

  def progress(self, step: int, scalars: dict):
    """One human line: the losses (each term of the objective on its own), accuracies, rates
    and the ETA from this window's rate (its steps timed to completion: loop.LoggingWindow)."""
    if not self.enabled:
      return
    rate = scalars["steps_per_s"]
    eta = datetime.timedelta(seconds=int((self.total_steps - step) / rate)) if rate > 0 else "?"
    # Only the objective's own terms: the MLM baseline has no decoder, drop no encoder loss.
    terms = ", ".join(f"{t} {scalars[t + '_loss']:.4f}" for t in ("enc", "dec", "bow")
                      if t + "_loss" in scalars)
    accs = " ".join(f"{t} {scalars[k]:.3f}" for t, k in (("enc", "enc_acc"), ("dec", "dec_acc"),
                                                          ("", "accuracy")) if k in scalars)
    parts = [f"step {step}/{self.total_steps}",
             f"loss {scalars['loss']:.4f}" + (f" ({terms})" if terms else ""),
             f"acc {accs.strip()}" if accs else "",
             f"grad norm {scalars['grad_norm']:.3f}", f"lr {scalars['lr']:.2e}",
             f"{rate:.2f} steps/s", f"{scalars['tokens_per_s']:.0f} tok/s",
             f"{scalars['queries_per_s']:.1f} queries/s" if "queries_per_s" in scalars else "",
             f"MFU {100 * scalars['mfu']:.1f}%" if "mfu" in scalars else "", f"ETA {eta}"]
    logging.info(" | ".join(p for p in parts if p))

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
