"""Training throughput of the real pretraining program (input pipeline included).

Runs `python -m retromae_jax.main` for a few steps in a temporary workdir and reports the
tokens/s and MFU that the run itself logs (compile excluded: the first step is not timed).

  python bench/pretrain_throughput.py --preset=minilm --batch_size=16 --seq_len=128 --steps=40 \
      [--config.KEY=VALUE ...]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--preset", default="minilm")
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--seq_len", type=int, default=128)
  parser.add_argument("--steps", type=int, default=40)
  args, extra = parser.parse_known_args()  # the rest: --config.KEY=VALUE flags for main
  with tempfile.TemporaryDirectory() as workdir:
    cmd = [sys.executable, "-m", "retromae_jax.main", f"--config=configs/base.py:{args.preset}",
           f"--workdir={workdir}", f"--config.batch_size={args.batch_size}",
           f"--config.data.max_seq_length={args.seq_len}",
           f"--config.total_steps={args.steps}", f"--config.log_every={args.steps}",
           f"--config.checkpoint_every={10 * args.steps}", *extra]
    subprocess.run(cmd, check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
      last = json.loads(f.readlines()[-1])
  print(json.dumps({"preset": args.preset, "batch_size": args.batch_size, "seq_len": args.seq_len,
                    "timed_steps": args.steps - 1, "tokens_per_s": round(last["tokens_per_s"], 1),
                    "steps_per_s": round(last["steps_per_s"], 3),
                    "mfu": round(last.get("mfu", float("nan")), 4)}))


if __name__ == "__main__":
  main()
