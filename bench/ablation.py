"""Issue 6's ablation: which pretraining objective gives the best retriever, at equal budget.

  python bench/ablation.py [--preset=small] [--objectives=mlm,retromae,...] [--corpus=pydoc]
      [--eval=pydoc] [--pretrain_steps=N] [--finetune_steps=N] [--out=bench/ablation]
      [--workdir=workdirs/ablation] [--pretrain_flag=--config.KEY=VALUE ...]
      [--finetune_flag=--config.KEY=VALUE ...]

For every objective: pretrain a small encoder (`python -m retromae_jax.main`, configs/base.py)
with the same seed, steps, batch, sequence length and data; score its exported encoder zero-shot
on the evaluation set; fine-tune it contrastively with the same short recipe (configs/finetune.py)
and score that. "none" is the floor: the random initialisation (the pretraining program run for
one step at learning rate 0, so it is the very same initial weights), fine-tuned the same way.

Runs go one after the other (each a subprocess) into --workdir/<objective>/{pretrain,finetune}
and every score is kept in --workdir/<objective>/eval_{zeroshot,finetuned}.json: a rerun skips
what is done and only does what is missing (an interrupted pretraining resumes from its
checkpoint). Then --out gets results.json (scores, per-query nDCG@10, loss curves, bootstrap
intervals), results.md (the table) and ablation.png (nDCG@10 per objective, and loss curves).

Noise: a 95% interval for each mean by bootstrap over queries, and for each objective a paired
bootstrap of its difference to the baseline (mlm) on the same resampled queries. This is the
evaluation set's sampling noise only; the training seed's variance is not in it.

Evaluation: CLS pooling, cosine similarity (the fine-tuning's), exact search, trec_eval's nDCG@10
(retromae_jax/evaluators/metrics.py). --eval=pydoc is the offline pydoc retrieval set's test split
(held-out modules); --eval=beir:DIR any BEIR folder.

Presets: `small` fits a 2-core CPU in under an hour (smoke-shaped BERT, 2 layers, hidden 128);
`minilm` is the all-MiniLM-L6-v2 shape with longer schedules, for an accelerator. Everything in a
preset can be overridden by flags, and any config key by --pretrain_flag / --finetune_flag.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # `python bench/ablation.py` from anywhere: the package is the repo's
  sys.path.insert(0, REPO)

# name -> pretraining config overrides (README "Objectives"; retromae_jax/objectives).
# In this order: a cut-short run still has the floor, the baseline and the default first.
OBJECTIVES = {
    "none": ["--config.total_steps=1", "--config.optim.learning_rate=0"],
    "mlm": ["--config.objective.kind=mlm"],
    "retromae": [],  # enhanced decoding, the spec's defaults
    "dupmae": ["--config.objective.bow_weight=0.1"],
    "drop": ["--config.encoder.masking=drop"],
    "basic": ["--config.decoder.kind=basic"],
    "cross_attention": ["--config.decoder.kind=cross_attention",
                        "--config.decoder.cross_attend_to=sentence"],
    "autoregressive": ["--config.decoder.kind=autoregressive"],
}
BASELINE = "mlm"

PRESETS = {
    # ~3 min per pretraining, ~1.5 min per fine-tune, ~40 s per evaluation on 2 shared CPU
    # cores (most of it start-up and compilation): all 8 in about 45 minutes.
    "small": dict(pretrain_config="configs/base.py:smoke", finetune_config="configs/finetune.py:smoke",
                  pretrain_steps=80, finetune_steps=60, batch_size=16, max_seq_length=64,
                  finetune_batch_size=16, eval_max_len=128, eval_query_max_len=32),
    "minilm": dict(pretrain_config="configs/base.py:minilm",
                   finetune_config="configs/finetune.py:minilm", pretrain_steps=10_000,
                   finetune_steps=500, batch_size=64, max_seq_length=128, finetune_batch_size=32,
                   eval_max_len=256, eval_query_max_len=32),
}
MEASURES = ("ndcg@10", "mrr@10", "recall@10", "recall@100")
METRIC = "ndcg@10"


# ---------------------------------------------------------------- Runs

def _done(workdir: str) -> bool:
  return os.path.isfile(os.path.join(workdir, "export", "encoder", "config.json"))


def _run(args: list[str], log_path: str) -> float:
  """Runs one training program; its output goes to log_path. Returns the wall seconds."""
  start = time.perf_counter()
  print(f"$ {' '.join(args)}  (log: {log_path})", flush=True)
  with open(log_path, "a", encoding="utf-8") as log:
    proc = subprocess.run(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=False)
  if proc.returncode:
    raise RuntimeError(f"exit status {proc.returncode}: {' '.join(args)}; see {log_path}")
  return time.perf_counter() - start


def pretrain(name: str, workdir: str, cfg: dict, extra: list[str]) -> None:
  steps = 1 if name == "none" else cfg["pretrain_steps"]
  args = [sys.executable, "-m", "retromae_jax.main", f"--config={cfg['pretrain_config']}",
          f"--workdir={workdir}", f"--config.data.source={cfg['corpus']}",
          f"--config.total_steps={steps}", f"--config.batch_size={cfg['batch_size']}",
          f"--config.data.max_seq_length={cfg['max_seq_length']}",
          f"--config.checkpoint_every={max(steps // 2, 1)}", f"--config.seed={cfg['seed']}",
          *extra, *OBJECTIVES[name]]
  os.makedirs(workdir, exist_ok=True)
  _record_seconds(workdir, _run(args, os.path.join(workdir, "log.txt")))


def finetune(pretrain_dir: str, workdir: str, cfg: dict, extra: list[str]) -> None:
  args = [sys.executable, "-m", "retromae_jax.main", f"--config={cfg['finetune_config']}",
          f"--workdir={workdir}", f"--config.init.model={pretrain_dir}",
          f"--config.total_steps={cfg['finetune_steps']}",
          f"--config.batch_size={cfg['finetune_batch_size']}",
          f"--config.checkpoint_every={cfg['finetune_steps']}", f"--config.seed={cfg['seed']}",
          "--config.eval.data=",  # scored here instead, with per-query numbers
          *extra]
  os.makedirs(workdir, exist_ok=True)
  _record_seconds(workdir, _run(args, os.path.join(workdir, "log.txt")))


def _record_seconds(workdir: str, seconds: float) -> None:
  with open(os.path.join(workdir, "wall_seconds.json"), "w", encoding="utf-8") as f:
    json.dump({"seconds": seconds}, f)


def _read_seconds(workdir: str):
  path = os.path.join(workdir, "wall_seconds.json")
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)["seconds"]


def evaluate(model_dir: str, data, cfg: dict, pooling: str = "cls") -> dict:
  """Scores an encoder: means plus the per-query nDCG@10 (in data.qrels' query order)."""
  from retromae_jax.evaluators import embed as encode
  from retromae_jax.evaluators import metrics
  from retromae_jax.evaluators import search
  _, model_cfg, params, tok = encode.load_encoder(model_dir)
  start = time.perf_counter()
  docs = encode.embed(model_cfg, params, tok, list(data.corpus.values()), pooling, True,
                      cfg["eval_max_len"], 64)
  queries = encode.embed(model_cfg, params, tok, list(data.queries.values()), pooling, True,
                         cfg["eval_query_max_len"], 64)
  scores, indices = search.search(queries, docs, 100)
  run = metrics.run_from_topk(list(data.queries), list(data.corpus), indices, scores)
  return score_run(data, run, time.perf_counter() - start)


def score_run(data, run: dict, seconds: float) -> dict:
  """A run's means plus its per-query nDCG@10 (in data.qrels' query order): any retriever's."""
  from retromae_jax.evaluators import metrics
  query_ids, per_query = metrics.per_query(data.qrels, run, MEASURES)
  out = {m: float(per_query[m].mean()) for m in MEASURES}
  out.update(num_queries=len(query_ids), num_docs=len(data.corpus), seconds=seconds,
             query_ids=query_ids, per_query_ndcg10=[round(float(x), 6) for x in per_query[METRIC]])
  return out


def cached_eval(path: str, model_dir: str, data_fn, cfg: dict, pooling: str = "cls",
                scorer=None) -> dict:
  """evaluate(model_dir, ...), or scorer(data) when given, saved at `path` (a rerun reads it)."""
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  result = scorer(data_fn()) if scorer else evaluate(model_dir, data_fn(), cfg, pooling)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(result, f)
  print(f"  {os.path.relpath(path, REPO)}: {METRIC} {result[METRIC]:.4f}", flush=True)
  return result


def loss_curve(workdir: str) -> dict:
  """{'step': [...], 'enc_loss': [...], 'dec_loss': [...], 'bow_loss': [...]} from metrics.jsonl."""
  curve = {"step": []}
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    return curve
  keys = ("enc_loss", "dec_loss", "bow_loss")
  with open(path, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  rows = [r for r in rows if "loss" in r]
  by_step = {r["step"]: r for r in rows}  # a resumed run may log a step twice: keep the last
  for step in sorted(by_step):
    curve["step"].append(step)
    for k in keys:
      curve.setdefault(k, []).append(by_step[step].get(k))
  return {k: v for k, v in curve.items() if k == "step" or any(x is not None for x in v)}


# ---------------------------------------------------------------- Statistics

def bootstrap(per_query: dict, baseline: str | None, samples: int = 2000, seed: int = 0) -> dict:
  """95% intervals by resampling queries: {name: {mean, lo, hi[, diff, diff_lo, diff_hi, p_le_0]}}.

  per_query: {name: [Q] scores, same queries in the same order}. The difference to the baseline
  is paired (one resample of query indices serves both), as the queries are shared.
  """
  names = list(per_query)
  if not names:
    return {}
  q = len(per_query[names[0]])
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, q, size=(samples, q))
  means = {n: np.asarray(per_query[n], np.float64)[idx].mean(1) for n in names}
  out = {}
  for n in names:
    lo, hi = np.percentile(means[n], [2.5, 97.5])
    out[n] = {"mean": float(np.mean(per_query[n])), "lo": float(lo), "hi": float(hi)}
    if baseline in means and n != baseline:
      diff = means[n] - means[baseline]
      dlo, dhi = np.percentile(diff, [2.5, 97.5])
      out[n].update(diff=float(np.mean(per_query[n]) - np.mean(per_query[baseline])),
                    diff_lo=float(dlo), diff_hi=float(dhi),
                    p_le_0=float((diff <= 0).mean()))  # one-sided bootstrap "p" of no gain
  return out


# ---------------------------------------------------------------- Report

def _fmt_ci(b: dict) -> str:
  return f"{b['mean']:.4f} [{b['lo']:.4f}, {b['hi']:.4f}]"


def _fmt_diff(b: dict) -> str:
  if "diff" not in b:
    return "-"
  return f"{b['diff']:+.4f} [{b['diff_lo']:+.4f}, {b['diff_hi']:+.4f}]"


def write_table(results: dict, path: str) -> str:
  """results.md: setup, then one row per objective (zero-shot and fine-tuned, with intervals)."""
  meta, runs = results["meta"], results["runs"]
  boot_z, boot_f = results["bootstrap"]["zeroshot"], results["bootstrap"]["finetuned"]
  lines = [
      "# Pretraining objective ablation (issue 6)", "",
      f"Command: `{meta['command']}`  ",
      f"Machine: {meta['machine']}  ",
      f"Wall time: {meta['wall_seconds'] / 60:.1f} min ({meta['wall_note']})  ",
      f"Training subprocesses: {meta['run_seconds'] / 60:.1f} min of it  ",
      f"Setup: {meta['setup']}", "",
      f"{METRIC} on {meta['eval']} ({meta['num_queries']} queries, {meta['num_docs']} documents); "
      "[95% bootstrap interval over queries]; Δ vs "
      f"{results['baseline']}: paired bootstrap. Best fine-tuned row in bold.", "",
      f"| objective | zero-shot {METRIC} | fine-tuned {METRIC} | Δ fine-tuned vs "
      f"{results['baseline']} | P(Δ ≤ 0) | Δ zero-shot vs {results['baseline']} | "
      "fine-tuned MRR@10 | fine-tuned R@100 | final enc / dec loss |",
      "|---|---|---|---|---|---|---|---|---|"]
  scored = [n for n in runs if n in boot_f]
  best = max(scored, key=lambda n: boot_f[n]["mean"]) if scored else None
  for name in runs:
    r = runs[name]
    z, f = boot_z.get(name), boot_f.get(name)
    curve = r.get("loss_curve", {})
    final = " / ".join(f"{curve[k][-1]:.3f}" if curve.get(k) and curve[k][-1] is not None
                       else "-" for k in ("enc_loss", "dec_loss"))
    label = f"**{name}**" if name == best else name
    fin = r.get("finetuned") or {}
    p_le_0 = f"{f['p_le_0']:.3f}" if f and "p_le_0" in f else "-"
    lines.append(
        f"| {label} | {_fmt_ci(z) if z else '-'} | {_fmt_ci(f) if f else '-'} | "
        f"{_fmt_diff(f) if f else '-'} | {p_le_0} | {_fmt_diff(z) if z else '-'} | "
        f"{fin.get('mrr@10', float('nan')):.4f} | "
        f"{fin.get('recall@100', float('nan')):.4f} | {final} |")
  lines += ["", meta.get("notes", "")]
  text = "\n".join(lines).rstrip() + "\n"
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
  return text


def write_plot(results: dict, path: str) -> None:
  """ablation.png: nDCG@10 bars (zero-shot, fine-tuned; 95% whiskers) and the loss curves."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  runs = list(results["runs"])
  fig, (ax, ax_loss) = plt.subplots(1, 2, figsize=(14, 5))
  x = np.arange(len(runs))
  for offset, (kind, color) in zip((-0.2, 0.2), (("zeroshot", "tab:gray"),
                                                  ("finetuned", "tab:blue"))):
    boot = results["bootstrap"][kind]
    mean = np.array([boot[n]["mean"] if n in boot else np.nan for n in runs])
    err = np.array([[boot[n]["mean"] - boot[n]["lo"], boot[n]["hi"] - boot[n]["mean"]]
                    if n in boot else [0.0, 0.0] for n in runs]).T
    ax.bar(x + offset, mean, 0.4, yerr=err, capsize=3, color=color,
           label="zero-shot" if kind == "zeroshot" else "fine-tuned")
  ax.set_xticks(x, runs, rotation=30, ha="right")
  ax.set_ylabel(f"{METRIC} ({results['meta']['eval']})")
  ax.set_title("Retrieval quality per pretraining objective (95% bootstrap CI)")
  ax.legend()
  for i, name in enumerate(runs):
    curve = results["runs"][name].get("loss_curve", {})
    if len(curve.get("step", [])) < 2:
      continue
    color = f"C{i % 10}"
    for key, style in (("dec_loss", "-"), ("enc_loss", "--")):
      if curve.get(key):
        steps = [s for s, v in zip(curve["step"], curve[key]) if v is not None]
        ax_loss.plot(steps, [v for v in curve[key] if v is not None], style, color=color,
                     label=f"{name} {key.split('_')[0]}")
  ax_loss.set_xlabel("pretraining step")
  ax_loss.set_ylabel("loss (nats/token)")
  ax_loss.set_title("Pretraining losses (solid: decoder, dashed: encoder)")
  ax_loss.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def summarize(runs: dict, meta: dict, baseline: str = BASELINE, samples: int = 2000) -> dict:
  """The results dict (results.json) from per-run records; adds the bootstrap intervals."""
  out = {"meta": meta, "baseline": baseline, "runs": runs, "bootstrap": {}}
  for kind in ("zeroshot", "finetuned"):
    per_query = {n: r[kind]["per_query_ndcg10"] for n, r in runs.items() if r.get(kind)}
    out["bootstrap"][kind] = bootstrap(per_query, baseline if baseline in per_query else None,
                                       samples)
  return out


# ---------------------------------------------------------------- Main

def _parse(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--preset", default="small", choices=sorted(PRESETS))
  p.add_argument("--objectives", default=",".join(OBJECTIVES),
                 help=f"comma-separated, from {sorted(OBJECTIVES)}")
  p.add_argument("--corpus", default="pydoc", help="pretraining data.source (pydoc, "
                 "pydoc:modules, jsonl:GLOB, text:GLOB, tfds:NAME)")
  p.add_argument("--eval", default="pydoc", help="pydoc (the offline set) or beir:DIR")
  p.add_argument("--split", default="test")
  p.add_argument("--seed", type=int, default=0)
  for key in ("pretrain_steps", "finetune_steps", "batch_size", "max_seq_length",
              "finetune_batch_size", "eval_max_len", "eval_query_max_len"):
    p.add_argument(f"--{key}", type=int, default=None, help="default: the preset's")
  p.add_argument("--pretrain_flag", action="append", default=[],
                 help="extra pretraining override, e.g. --pretrain_flag=--config.model.num_layers=4")
  p.add_argument("--finetune_flag", action="append", default=[])
  p.add_argument("--workdir", default=os.path.join(REPO, "workdirs", "ablation"))
  p.add_argument("--out", default=os.path.join(REPO, "bench", "ablation"))
  p.add_argument("--bootstrap_samples", type=int, default=2000)
  p.add_argument("--report_only", action="store_true",
                 help="no training: report whatever runs are finished")
  return p.parse_args(argv)


def main(argv=None):
  args = _parse(argv)
  # Absolute: the training programs run from the repository root, and Orbax wants them so.
  args.workdir, args.out = os.path.abspath(args.workdir), os.path.abspath(args.out)
  start = time.perf_counter()
  started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
  cfg = dict(PRESETS[args.preset], corpus=args.corpus, seed=args.seed)
  for key in list(cfg):
    if getattr(args, key, None) is not None:
      cfg[key] = getattr(args, key)
  names = [n.strip() for n in args.objectives.split(",") if n.strip()]
  unknown = sorted(set(names) - set(OBJECTIVES))
  if unknown:
    raise SystemExit(f"--objectives: unknown {unknown}; expected from {sorted(OBJECTIVES)}")

  data_cache = {}

  def data():
    if "data" not in data_cache:
      from retromae_jax.data.evalsets import beir
      from retromae_jax.data.evalsets import pydoc_set
      beir_dir = pydoc_set.cached_dir() if args.eval == "pydoc" else args.eval.removeprefix("beir:")
      data_cache["data"] = beir.load(beir_dir, args.split)
    return data_cache["data"]

  runs = {}
  for name in names:
    root = os.path.join(args.workdir, name)
    pt_dir, ft_dir = os.path.join(root, "pretrain"), os.path.join(root, "finetune")
    if not args.report_only:
      if not _done(pt_dir):
        pretrain(name, pt_dir, cfg, args.pretrain_flag)
      zs = cached_eval(os.path.join(root, "eval_zeroshot.json"), pt_dir, data, cfg)
      if not _done(ft_dir):
        finetune(pt_dir, ft_dir, cfg, args.finetune_flag)
      fs = cached_eval(os.path.join(root, "eval_finetuned.json"), ft_dir, data, cfg)
    else:
      zs = fs = None
      for kind, d in (("zeroshot", pt_dir), ("finetuned", ft_dir)):
        path = os.path.join(root, f"eval_{kind}.json")
        if _done(d) and os.path.isfile(path):
          with open(path, encoding="utf-8") as f:
            if kind == "zeroshot":
              zs = json.load(f)
            else:
              fs = json.load(f)
    runs[name] = {"pretrain_overrides": OBJECTIVES[name], "zeroshot": zs, "finetuned": fs,
                  "loss_curve": loss_curve(pt_dir) if name != "none" else {"step": []},
                  "pretrain_seconds": _read_seconds(pt_dir),
                  "finetune_seconds": _read_seconds(ft_dir)}

  # Every training invocation is logged in the workdir, so that a resumed run, or a report
  # rebuilt with --report_only, states the command and the wall time it really took.
  log_path = os.path.join(args.workdir, "invocations.jsonl")
  command = "python bench/ablation.py " + " ".join(argv if argv is not None else sys.argv[1:])
  if not args.report_only:
    os.makedirs(args.workdir, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as f:
      f.write(json.dumps({"command": command, "started": started,
                          "seconds": time.perf_counter() - start}) + "\n")
  invocations = []
  if os.path.isfile(log_path):
    with open(log_path, encoding="utf-8") as f:
      invocations = [json.loads(line) for line in f if line.strip()]
  first = next((r["finetuned"] or r["zeroshot"] for r in runs.values()
                if r["finetuned"] or r["zeroshot"]), {}) or {}
  wall = sum(i["seconds"] for i in invocations) if invocations else time.perf_counter() - start
  run_seconds = sum(s for r in runs.values()
                    for s in (r["pretrain_seconds"], r["finetune_seconds"]) if s)
  meta = {
      "command": " ; ".join(i["command"] for i in invocations) or command,
      "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}, "
                 f"Python {platform.python_version()}",
      "wall_seconds": wall,
      "wall_note": (f"{len(invocations)} invocation(s), started {invocations[0]['started']}"
                    if invocations else "this --report_only invocation"),
      "run_seconds": run_seconds, "invocations": invocations,
      "setup": (f"preset {args.preset}: pretrain {cfg['pretrain_config']} on {cfg['corpus']}, "
                f"{cfg['pretrain_steps']} steps x {cfg['batch_size']} x {cfg['max_seq_length']} "
                f"tokens, seed {cfg['seed']}; fine-tune {cfg['finetune_config']} "
                f"({args.eval} train split), {cfg['finetune_steps']} steps x "
                f"{cfg['finetune_batch_size']} queries; eval CLS + cosine, "
                f"{cfg['eval_max_len']}/{cfg['eval_query_max_len']} tokens"
                + (f"; extra pretrain flags {args.pretrain_flag}" if args.pretrain_flag else "")
                + (f"; extra fine-tune flags {args.finetune_flag}" if args.finetune_flag else "")),
      "eval": f"{args.eval} {args.split}",
      "num_queries": first.get("num_queries"), "num_docs": first.get("num_docs"),
      "config": cfg,
      "notes": ("Leakage note: the pretraining corpus `pydoc` holds the very docstrings the pydoc "
                "retrieval set is built from (queries and documents, never as pairs), so this is "
                "a domain-adaptive pretraining comparison." if args.corpus.startswith("pydoc")
                and args.eval == "pydoc" else ""),
  }
  results = summarize(runs, meta, samples=args.bootstrap_samples)
  for r in results["runs"].values():  # keep results.json readable: per-query scores once
    for kind in ("zeroshot", "finetuned"):
      if r[kind]:
        r[kind] = {k: v for k, v in r[kind].items() if k != "query_ids"}
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=1)
  print(write_table(results, os.path.join(args.out, "results.md")))
  write_plot(results, os.path.join(args.out, "ablation.png"))


if __name__ == "__main__":
  main()
