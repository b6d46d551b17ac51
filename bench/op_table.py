"""Per-op time table of a profiled step: where the step's time goes, by kind of work.

  python bench/pretrain_throughput.py ... --trace_dir=DIR   # writes DIR/step.hlo.txt + a trace
  python bench/op_table.py DIR [--steps=N] [--top=25]

Reads the jax.profiler trace (perfetto_trace.json.gz: one event per executed XLA op) and the
compiled step's HLO (to say what each op computes: its called computation's opcodes), and prints
a markdown table of ms per step by kind, then the top ops, then the dots the trace times only at
their launch (XLA:CPU runs plain dots asynchronously: their work is in no row).
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re

# The first rule that matches an op's body (its fused computation's opcodes) names its kind.
KINDS = [
    ("dropout bits (threefry)", re.compile(r"shift-right-logical.*xor|xor.*shift-right-logical|"
                                           r"rng-bit-generator|threefry", re.S)),
    ("matmul", re.compile(r"\bdot\(|convolution\(", re.S)),
    ("softmax (exp, max, sum)", re.compile(r"exponential\(", re.S)),
    ("GELU (erf)", re.compile(r"\berf\(", re.S)),
    ("LayerNorm (rsqrt)", re.compile(r"rsqrt\(", re.S)),
    ("gather / scatter", re.compile(r"\bgather\(|\bscatter\(", re.S)),
    ("reduce", re.compile(r"\breduce\(", re.S)),
    ("copy / transpose / broadcast", re.compile(r"copy\(|transpose\(|broadcast\(|bitcast", re.S)),
]
SKIP = re.compile(r"^(ThunkExecutor|\$|PjitFunction|SlinkyThreadPool|XlaModule|Thunk)")


def computations(hlo: str) -> dict[str, str]:
  """computation name -> its body text."""
  out, name, lines = {}, None, []
  for line in hlo.splitlines():
    head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if head and not line.startswith(" "):
      name, lines = head.group(1), []
    elif line.startswith("}") and name:
      out[name] = "\n".join(lines)
      name = None
    elif name:
      lines.append(line)
  return out


def op_bodies(hlo: str) -> dict[str, str]:
  """instruction name -> the text that says what it computes (its line, plus the body of the
  computation it calls, recursively one level)."""
  comps = computations(hlo)
  bodies = {}
  for line in hlo.splitlines():
    match = re.match(r"^\s+(?:ROOT )?%?([\w.\-]+) = ", line)
    if not match:
      continue
    text = line
    for called in re.findall(r"(?:calls|to_apply|body)=%?([\w.\-]+)", line):
      body = comps.get(called, "")
      text += "\n" + body
      for inner in re.findall(r"(?:calls|to_apply)=%?([\w.\-]+)", body):
        text += "\n" + comps.get(inner, "")
    bodies[match.group(1)] = text
  return bodies


def detail(body: str) -> str:
  """The output shapes of the dots (or the root) an op computes."""
  dots = re.findall(r"= (\w+\[[\d,]*\])\S* dot\(", body)
  if dots:
    return "dot " + ", ".join(dict.fromkeys(dots))
  first = re.search(r"= (\w+\[[\d,]*\])", body)
  return first.group(1) if first else ""


def kind_of(name: str, body: str) -> str:
  if name.startswith("ynn_fusion"):
    return "matmul" if not KINDS[0][1].search(body) else KINDS[0][0]
  for kind, pattern in KINDS:
    if pattern.search(body):
      return kind
  return "other element-wise"


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("trace_dir")
  parser.add_argument("--steps", type=int, default=3, help="steps the trace holds")
  parser.add_argument("--top", type=int, default=25)
  args = parser.parse_args()
  trace = glob.glob(os.path.join(args.trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
  events = json.load(gzip.open(sorted(trace)[-1]))
  events = events["traceEvents"] if isinstance(events, dict) else events
  with open(os.path.join(args.trace_dir, "step.hlo.txt"), encoding="utf-8") as f:
    bodies = op_bodies(f.read())
  per_op = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and not SKIP.match(e["name"]):
      per_op[e["name"]] += e.get("dur", 0) / 1e3 / args.steps  # ms per step
  by_kind = collections.Counter()
  for name, ms in per_op.items():
    by_kind[kind_of(name, bodies.get(name, ""))] += ms
  total = sum(per_op.values())
  print(f"| kind | ms per step | share |\n|---|---|---|")
  for kind, ms in by_kind.most_common():
    print(f"| {kind} | {ms:,.0f} | {ms / total:.0%} |")
  print(f"| all ops | {total:,.0f} | |\n")
  print(f"| op | kind | computes | ms per step |\n|---|---|---|---|")
  for name, ms in per_op.most_common(args.top):
    body = bodies.get(name, "")
    print(f"| {name} | {kind_of(name, body)} | {detail(body)} | {ms:,.0f} |")
  # XLA:CPU runs a plain (non-YNN) dot asynchronously on its Eigen pool: the trace times only
  # its launch, so its work is in no row above (the wall clock still counts it).
  launched = [f"{name} ({detail(bodies[name])})" for name, ms in per_op.items()
              if re.match(r"dot(_general)?\.\d+$", name) and ms < 1
              and re.search(r"\bdot\(", bodies.get(name, ""))]
  if launched:
    print(f"\nTimed at their launch only (asynchronous dots, work not counted above): "
          f"{', '.join(sorted(launched))}")


if __name__ == "__main__":
  main()
