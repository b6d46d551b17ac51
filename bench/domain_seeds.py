"""Pools bench/domain_adaptation.py runs of several training seeds and pairs any two arms.

  python bench/domain_seeds.py --runs=OUT_SEED0,OUT_SEED1 \
      --pairs=retromae+warmup:mean/mlm+warmup:mean,retromae+warmup:mean/finetune:mean \
      [--kind=finetuned|zeroshot] [--out=FILE.md]

OUT_*: the --out folders of runs on the same split (their results.json). For each pair A/B and
each seed, the paired bootstrap difference A - B over the same queries; then both seeds pooled:
each query's score averaged over the seeds that have both arms, and the paired bootstrap of that
(bench/ablation.py's statistics: 95% intervals, P(Δ ≤ 0)). Averaging over seeds puts the
training seed's noise into the difference; the interval is still over queries only.
"""

import argparse
import json
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from bench import ablation  # noqa: E402  (after the path set-up above)


def per_query(results: dict, arm: str, kind: str):
  """{query id: nDCG@10} of one arm in one run, or None where the run lacks it."""
  record = results["runs"].get(arm, {}).get(kind)
  if not record:
    return None
  return dict(zip(record["query_ids"], record["per_query_ndcg10"]))


def compare(runs: list[dict], a: str, b: str, kind: str, samples: int = 2000) -> dict:
  """Per seed and pooled: A - B, paired over the queries both arms have."""
  seeds, pooled_a, pooled_b = [], [], []
  for results in runs:
    qa, qb = per_query(results, a, kind), per_query(results, b, kind)
    if qa is None or qb is None:
      seeds.append(None)
      continue
    queries = sorted(set(qa) & set(qb))
    seeds.append(ablation.bootstrap({a: [qa[q] for q in queries], b: [qb[q] for q in queries]},
                                    b, samples)[a])
    pooled_a.append({q: qa[q] for q in queries})
    pooled_b.append({q: qb[q] for q in queries})
  pooled = None
  if pooled_a:
    queries = sorted(set.intersection(*(set(p) for p in pooled_a)))
    mean_a = [float(np.mean([p[q] for p in pooled_a])) for q in queries]
    mean_b = [float(np.mean([p[q] for p in pooled_b])) for q in queries]
    pooled = ablation.bootstrap({a: mean_a, b: mean_b}, b, samples)[a]
    pooled["seeds"] = len(pooled_a)
  return {"a": a, "b": b, "kind": kind, "per_seed": seeds, "pooled": pooled}


def table(comparisons: list[dict], names: list[str]) -> str:
  lines = ["| A - B | " + " | ".join(f"seed run {n}" for n in names)
           + " | pooled over seeds | P(Δ ≤ 0) |", "|---|" + "---|" * (len(names) + 2)]
  for c in comparisons:
    cells = [ablation._fmt_diff(s) if s else "-" for s in c["per_seed"]]
    pooled = c["pooled"]
    lines.append(f"| {c['a']} - {c['b']} ({c['kind']}) | " + " | ".join(cells) + " | "
                 + (f"{ablation._fmt_diff(pooled)} ({pooled['seeds']} seeds) | "
                    f"{pooled['p_le_0']:.3f} |" if pooled else "- | - |"))
  return "\n".join(lines) + "\n"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--runs", required=True, help="comma-separated --out folders, one per seed")
  p.add_argument("--pairs", required=True, help="comma-separated A/B arm pairs")
  p.add_argument("--kind", default="finetuned", choices=("finetuned", "zeroshot"))
  p.add_argument("--samples", type=int, default=2000)
  p.add_argument("--out", default="", help="also write the table here")
  args = p.parse_args(argv)
  names = [r for r in args.runs.split(",") if r]
  runs = []
  for name in names:
    with open(os.path.join(name, "results.json"), encoding="utf-8") as f:
      runs.append(json.load(f))
  comparisons = []
  for pair in args.pairs.split(","):
    a, sep, b = pair.partition("/")
    if not sep or not a or not b:
      raise SystemExit(f"--pairs: expected A/B, got {pair!r}")
    comparisons.append(compare(runs, a, b, args.kind, args.samples))
  text = table(comparisons, [os.path.basename(n.rstrip("/")) for n in names])
  print(text)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(text)
  return comparisons


if __name__ == "__main__":
  main()
