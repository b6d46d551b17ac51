"""Wall-clock throughput of the pretraining step on whatever device JAX finds.

Builds the config's model, optimizer and update step (the training program's own pieces:
trainers/loop.make_update_step, objectives/losses.objective_loss), takes `--batches` distinct batches
from the real input pipeline into memory, compiles, then times `--steps` steps by the wall clock
to their COMPLETION (jax.block_until_ready on the last state: JAX dispatches asynchronously, so a
clock read after dispatch alone would time nothing). The host pipeline is excluded (batches are
ready before the clock starts); `--program` instead times the whole training program
(`python -m retromae_jax.main`) around its process, pipeline, logging and checkpoints included.

  python bench/pretrain_throughput.py --preset=minilm --batch_size=16 --seq_len=128 --steps=10
  python bench/pretrain_throughput.py --preset=base --batch_size=32 --seq_len=512  # accelerator
  [--config.KEY=VALUE ...]  e.g. --config.data.pack=False --config.model.dtype=bfloat16
  [--trace_dir=DIR]  a jax.profiler trace of the timed steps (TensorBoard / Perfetto)
  [--versus=KEY=VALUE ... --pairs=N]  A/B: the config and the config with these overrides
      (e.g. --versus=model.vocab_head=autodiff), timed in N alternating pairs in one process

The last line is one JSON object: s_per_step, real tokens/s, slots/s, MFU (FLOPs the device
computes, trainers/flops.py, over the device's peak: configs' cpu_peak_flops on CPU).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _config(args, extra):
  """configs/base.py's preset with --config.KEY=VALUE overrides (values as Python literals)."""
  import ast

  from configs.base import get_config
  config = get_config(args.preset)
  for flag in extra:
    key, sep, value = flag.partition("=")
    if not key.startswith("--config.") or not sep:
      raise SystemExit(f"expected --config.KEY=VALUE, got {flag!r}")
    *path, name = key[len("--config."):].split(".")
    node = config
    for part in path:
      node = node[part]
    try:
      node[name] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      node[name] = value  # a string
  config.batch_size = args.batch_size
  config.data.max_seq_length = args.seq_len
  config.total_steps = max(config.total_steps, args.steps + args.batches + 1)
  return config


def _compiled_step(args, config):
  """(jitted update step, its initial state, the device batches, model config, objective) of
  `config`, the first step run (compiled) and its seconds."""
  import flax.linen as nn
  import jax

  from retromae_jax.data.pretrain import pipeline
  from retromae_jax.trainers import settings
  from retromae_jax.data import tokenizer as tokenizer_lib
  from retromae_jax.objectives import losses

  from retromae_jax.objectives.registry import make_model
  from retromae_jax.trainers import loop, optim, train_state, validation

  validation.validate(config)
  tokenizer = tokenizer_lib.load_tokenizer(config.tokenizer)
  multiple = config.model.vocab_multiple
  cfg = settings.model(config, -(-tokenizer.get_vocab_size() // multiple) * multiple)
  objective = settings.objective(config)
  model = make_model(cfg, objective)
  tx, schedule = optim.make_optimizer(config.optim, config.total_steps)

  batches = pipeline.pretrain_batches(settings.pretrain_input(config), tokenizer)
  host = [next(batches) for _ in range(args.batches)]
  batches.close()
  params = nn.unbox(model.init(jax.random.key(config.seed), host[0], deterministic=True))["params"]
  state = train_state.TrainState(step=0, params=params, opt_state=tx.init(params))

  def loss_and_grads(params, batch, dropout_key):
    def loss_fn(params):
      outputs = model.apply({"params": params}, batch, deterministic=False,
                            rngs={"dropout": dropout_key}, method="outputs")
      return losses.objective_loss(outputs, batch, objective)
    return jax.value_and_grad(loss_fn, has_aux=True)(params)

  update = jax.jit(loop.make_update_step(loss_and_grads, tx, {"lr": schedule},
                                         lambda b: b["attention_mask"].sum(), config.seed,
                                         dropout_prng=config.dropout_prng),
                   donate_argnums=0)
  device_batches = [jax.device_put(b) for b in host]
  start = time.perf_counter()
  state, _ = update(state, device_batches[0])
  jax.block_until_ready(state)
  return update, state, device_batches, cfg, objective, time.perf_counter() - start


def _timed_steps(update, state, device_batches, steps):
  """(state, last metrics, wall seconds of `steps` steps to their completion)."""
  import jax
  start = time.perf_counter()
  for i in range(steps):
    state, metrics = update(state, device_batches[i % len(device_batches)])
  jax.block_until_ready((state, metrics))
  return state, metrics, time.perf_counter() - start


def step_throughput(args, extra):
  import jax
  import numpy as np

  from retromae_jax.trainers import flops

  config = _config(args, extra)
  update, state, device_batches, cfg, objective, compile_s = _compiled_step(args, config)
  if args.trace_dir:
    # The compiled program's HLO names every op of the trace (bench/op_table.py reads both).
    os.makedirs(args.trace_dir, exist_ok=True)
    with open(os.path.join(args.trace_dir, "step.hlo.txt"), "w", encoding="utf-8") as f:
      f.write(update.lower(state, device_batches[0]).compile().as_text())
    jax.profiler.start_trace(args.trace_dir, create_perfetto_trace=True)
  state, metrics, seconds = _timed_steps(update, state, device_batches, args.steps)
  if args.trace_dir:
    jax.profiler.stop_trace()

  real = sum(int(device_batches[i % len(device_batches)]["attention_mask"].sum())
             for i in range(args.steps))
  example = device_batches[0]
  flops_per_step = config.batch_size * flops.train_flops_per_example(
      cfg, objective, args.seq_len, encoder_len=example["encoder_input_ids"].shape[1],
      encoder_positions=example["encoder_positions"].shape[1] if "encoder_positions" in example
      else 0)
  peak = flops.device_peak_flops(config)
  device = jax.devices()[0]
  return {
      "preset": args.preset, "batch_size": args.batch_size, "seq_len": args.seq_len,
      "pack": bool(config.data.pack), "dtype": str(np.dtype(cfg.dtype)),
      "attention": cfg.attention, "device": f"{device.platform}:{device.device_kind}",
      "devices": jax.device_count(), "timed_steps": args.steps,
      "compile_and_first_step_s": round(compile_s, 2),
      "s_per_step": round(seconds / args.steps, 4),
      "tokens_per_s": round(real / seconds, 1),
      "slots_per_s": round(args.steps * args.batch_size * args.seq_len / seconds, 1),
      "real_slot_fraction": round(real / (args.steps * args.batch_size * args.seq_len), 3),
      "gflop_per_step": round(flops_per_step / 1e9, 1),
      "mfu": round(flops_per_step * args.steps / seconds / peak, 4) if peak else None,
      "loss_last": round(float(metrics["loss"]), 4),
      "loadavg_1m": round(os.getloadavg()[0], 2),
  }


def paired_throughput(args, extra):
  """Seconds per step of the config (A) and of the config with --versus overrides (B), timed
  in alternating pairs A B A B ... in this one process, so that a changing machine load falls
  on both alike; reports each pair's B/A ratio and their median."""
  import numpy as np
  steps = {}
  for name, flags in (("A", extra), ("B", extra + [f"--config.{v}" for v in args.versus])):
    update, state, batches, *_ = _compiled_step(args, _config(args, flags))
    steps[name] = [update, state, batches]
  load_before = os.getloadavg()
  seconds = {"A": [], "B": []}
  for _ in range(args.pairs):
    for name, (update, state, batches) in steps.items():
      state, _, s = _timed_steps(update, state, batches, args.steps)
      steps[name][1] = state
      seconds[name].append(s / args.steps)
  ratios = [b / a for a, b in zip(seconds["A"], seconds["B"])]
  return {"preset": args.preset, "batch_size": args.batch_size, "seq_len": args.seq_len,
          "A": " ".join(extra) or "(defaults)", "B": " ".join(args.versus),
          "steps_per_timing": args.steps,
          "A_s_per_step": [round(s, 3) for s in seconds["A"]],
          "B_s_per_step": [round(s, 3) for s in seconds["B"]],
          "B_over_A": [round(r, 3) for r in ratios],
          "median_B_over_A": round(float(np.median(ratios)), 3),
          "loadavg_before": [round(x, 2) for x in load_before],
          "loadavg_after": [round(x, 2) for x in os.getloadavg()]}


def program_throughput(args, extra):
  """The whole training program, timed around its process (compile included)."""
  with tempfile.TemporaryDirectory() as workdir:
    cmd = [sys.executable, "-m", "retromae_jax.main", f"--config=configs/base.py:{args.preset}",
           f"--workdir={workdir}", f"--config.batch_size={args.batch_size}",
           f"--config.data.max_seq_length={args.seq_len}",
           f"--config.total_steps={args.steps}", f"--config.log_every={args.steps}",
           f"--config.checkpoint_every={10 * args.steps}", *extra]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
      last = json.loads(f.readlines()[-1])
  return {"preset": args.preset, "batch_size": args.batch_size, "seq_len": args.seq_len,
          "steps": args.steps, "process_s": round(seconds, 1),
          "logged_tokens_per_s": round(last["tokens_per_s"], 1),
          "logged_steps_per_s": round(last["steps_per_s"], 3),
          "logged_mfu": round(last.get("mfu", float("nan")), 4),
          "loadavg_1m": round(os.getloadavg()[0], 2)}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--preset", default="minilm")
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--seq_len", type=int, default=128)
  parser.add_argument("--steps", type=int, default=10, help="timed steps")
  parser.add_argument("--batches", type=int, default=4, help="distinct batches cycled through")
  parser.add_argument("--trace_dir", default="", help="write a jax.profiler trace here")
  parser.add_argument("--program", action="store_true",
                      help="time the whole training program's process instead of the step")
  parser.add_argument("--versus", action="append", default=[],
                      help="KEY=VALUE (repeatable): also time the config with these overrides, "
                           "in alternating pairs with the config itself")
  parser.add_argument("--pairs", type=int, default=3, help="alternating pairs with --versus")
  args, extra = parser.parse_known_args()  # the rest: --config.KEY=VALUE flags
  if args.program:
    result = program_throughput(args, extra)
  elif args.versus:
    result = paired_throughput(args, extra)
  else:
    result = step_throughput(args, extra)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
