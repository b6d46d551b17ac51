"""Ours against the PyTorch peer (bench/torch_peer.py), side by side in one run, alternating,
each figure a separate process timed by the wall clock to its completion (minilm, 16 x 128).

  python bench/side_by_side.py --rounds=2 --out=/tmp/side_by_side.jsonl

Per round, in this order (the load average is recorded before each):
  equal slots (no packing on either side, every row 128 slots): ours' s/step
    (bench/pretrain_throughput.py, data.pack=False) vs the peer's (--text=full_rows);
  paragraphs as a corpus holds them (the standard library's docstrings, short and long mixed,
    one document per line of a jsonl both read): ours' real tokens/s with packing vs the peer's
    with its collator (one text per example, each batch padded to its longest);
then once, the host side on full 128-token rows: our pipeline with packing (retromae_jax.data.
bench, masking alone) vs the peer's collator (--mode=collator --text=full_rows).
Each line of --out is one JSON result with its command, wall seconds and load average.
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_documents(path):
  """The peer's stdlib docstrings, one document per jsonl line (what both sides read)."""
  spec = importlib.util.spec_from_file_location("torch_peer",
                                                os.path.join(ROOT, "bench", "torch_peer.py"))
  peer = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(peer)
  with open(path, "w", encoding="utf-8") as f:
    for text in peer.stdlib_docstrings():
      f.write(json.dumps({"text": text}) + "\n")


def run(name, cmd, out):
  load = os.getloadavg()[0]
  start = time.perf_counter()
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  seconds = time.perf_counter() - start
  if proc.returncode:
    raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  record = {"name": name, "cmd": " ".join(cmd[1:]), "process_s": round(seconds, 1),
            "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2), **result}
  print(json.dumps(record), flush=True)
  out.write(json.dumps(record) + "\n")
  out.flush()
  return record


def render(path):
  """A markdown table of the results in `path` (one line per process, in run order)."""
  print("| # | what | process s | load before/after | s/step | real tokens/s | real-slot fraction "
        "| MFU | host examples/s |\n|---|---|---|---|---|---|---|---|---|")
  with open(path, encoding="utf-8") as f:
    for i, line in enumerate(f, 1):
      r = json.loads(line)
      step = r.get("s_per_step", r.get("step_s"))  # means over the timed steps
      tokens = r.get("tokens_per_s", r.get("train_tokens_per_s")) if step else None
      host = r.get("masking_examples_per_s", r.get("collator_examples_per_s"))
      cells = [i, r["name"], r["process_s"], f"{r['load_before']}/{r['load_after']}", step,
               tokens, r.get("real_slot_fraction"), r.get("mfu"), host]
      print("| " + " | ".join("" if c is None else str(c) for c in cells) + " |")


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--render", default="", help="print the table of a results file, run nothing")
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--steps", type=int, default=8)
  parser.add_argument("--out", default="/tmp/side_by_side.jsonl")
  parser.add_argument("--docs", default="/tmp/stdlib_docstrings.jsonl")
  parser.add_argument("--skip_host", action="store_true")
  parser.add_argument("--pairs", default="equal_slots,paragraphs",
                      help="which step pairs each round runs (comma-separated)")
  args = parser.parse_args()
  if args.render:
    return render(args.render)
  write_documents(args.docs)
  py, steps = sys.executable, str(args.steps)
  ours = [py, "bench/pretrain_throughput.py", "--preset=minilm", "--batch_size=16",
          "--seq_len=128", f"--steps={steps}"]
  peer = [py, "bench/torch_peer.py", "--mode=step", "--batch_size=16", "--seq_len=128",
          f"--steps={steps}", "--warmup=2"]
  with open(args.out, "a", encoding="utf-8") as out:
    pairs = args.pairs.split(",")
    for _ in range(args.rounds):
      if "equal_slots" in pairs:
        run("ours_equal_slots", ours + ["--config.data.pack=False",
                                        "--config.data.source=pydoc:modules"], out)
        run("peer_equal_slots", peer + ["--text=full_rows"], out)
      if "paragraphs" in pairs:
        run("ours_paragraphs_packed", ours + [f"--config.data.source=jsonl:{args.docs}"], out)
        run("peer_paragraphs_collator", peer + [f"--text=jsonl:{args.docs}"], out)
    if not args.skip_host:
      run("ours_host_packed", [py, "-m", "retromae_jax.tools.input_bench",
                               "--config=configs/base.py:minilm", "--num_batches=50",
                               "--config.data.source=pydoc:modules"], out)
      run("peer_collator", [py, "bench/torch_peer.py", "--mode=collator", "--text=full_rows",
                            "--collator_batches=20"], out)


if __name__ == "__main__":
  main()
