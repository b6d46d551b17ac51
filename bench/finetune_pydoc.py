"""Does contrastive fine-tuning help? An encoder's nDCG@10 on the offline pydoc retrieval set's
test split before (zero-shot) and after fine-tuning on its train split.

  python bench/finetune_pydoc.py --init=PATH --workdir=DIR [--preset=smoke|minilm]
      [--hard_negatives=N] [--override=--config.KEY=VALUE ...]

PATH is one of our pretraining workdirs (its export/encoder) or a HF BERT directory. The set is
built once into DIR/pydoc (data/evalsets/pydoc_set.py: one corpus, queries split by module, so no
module has queries on both sides). With --hard_negatives=N the init model first mines N hard
negatives per train query (`python -m retromae_jax.tools.mine`, ranks 3..): training groups are then
1 positive + N negatives; without, the only negatives are the global batch's other passages.

Training is the real command line (`python -m retromae_jax.main --config=configs/finetune.py`),
which evaluates on the test split before the first step (config.eval.at_start: the zero-shot
score of the same model, pooling and lengths) and at the end; both come from the run's
metrics.jsonl. Prints one JSON line and writes it to DIR/bench.json.
"""

import json
import os
import subprocess
import sys
import time

from absl import app, flags, logging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

_INIT = flags.DEFINE_string("init", None, "Pretraining workdir or HF BERT directory.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the set, the mined negatives and the "
                               "fine-tuning run go.")
_PRESET = flags.DEFINE_enum("preset", "smoke", ["smoke", "minilm"], "configs/finetune.py preset.")
_HARD = flags.DEFINE_integer("hard_negatives", 0, "Mine this many negatives per query (0: none).")
_OVERRIDES = flags.DEFINE_multi_string("override", [], "Extra --config.KEY=VALUE flags.")
flags.mark_flags_as_required(["init", "workdir"])


def _config_value(overrides, key, default):
  for flag in reversed(overrides):
    if flag.startswith(f"--config.{key}="):
      return flag.split("=", 1)[1]
  return default


def _python(*args):
  start = time.perf_counter()
  logging.info("Running: %s", " ".join(args))
  subprocess.run([sys.executable, *args], cwd=ROOT, check=True)
  return time.perf_counter() - start


def main(argv):
  del argv
  from configs import finetune as finetune_config
  from retromae_jax.data.evalsets import pydoc_set

  workdir = os.path.abspath(_WORKDIR.value)
  beir_dir = os.path.join(workdir, "pydoc")
  if not os.path.isfile(os.path.join(beir_dir, "pydoc_set.json")):
    pydoc_set.build(beir_dir)
  with open(os.path.join(beir_dir, "pydoc_set.json"), encoding="utf-8") as f:
    set_info = json.load(f)

  overrides = list(_OVERRIDES.value)
  defaults = finetune_config.get_config(_PRESET.value)
  pooling = _config_value(overrides, "model.pooling", defaults.model.pooling)
  similarity = _config_value(overrides, "model.similarity", defaults.model.similarity)
  query_len = _config_value(overrides, "data.query_max_len", defaults.data.query_max_len)
  passage_len = _config_value(overrides, "data.passage_max_len", defaults.data.passage_max_len)
  seconds = {}
  train = [f"--config.data.train=beir:{beir_dir}", f"--config.eval.data={beir_dir}"]
  if _HARD.value:
    mined = os.path.join(workdir, "mined.jsonl")
    # Ranks 0-2 are skipped: an unjudged but relevant document sits at the very top.
    seconds["mine"] = _python(
        "-m", "retromae_jax.tools.mine", f"--model={_INIT.value}", f"--data={beir_dir}",
        "--split=train", f"--out={mined}", f"--top_k={_HARD.value}", "--range=3-60",
        f"--pooling={pooling}", f"--normalize={similarity == 'cosine'}",
        f"--max_len={passage_len}", f"--query_max_len={query_len}")
    train += [f"--config.data.hard_negatives={mined}",
              f"--config.data.group_size={_HARD.value + 1}"]
  run_dir = os.path.join(workdir, "finetune")
  seconds["finetune"] = _python(
      "-m", "retromae_jax.main", f"--config=configs/finetune.py:{_PRESET.value}",
      f"--workdir={run_dir}", f"--config.init.model={_INIT.value}", "--config.eval.at_start=True",
      *train, *overrides)

  with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  evals = [r for r in rows if "eval/ndcg@10" in r]
  train_rows = [r for r in rows if "loss" in r]
  zero_shot, final = evals[0], evals[-1]
  if zero_shot["step"] != 0:
    raise ValueError(f"{run_dir}: no step-0 evaluation (the run resumed?); use a fresh --workdir")
  result = {
      "init": _INIT.value, "preset": _PRESET.value, "overrides": overrides,
      "hard_negatives": _HARD.value, "pooling": pooling, "similarity": similarity,
      "set": set_info, "steps": final["step"],
      "zero_shot": {k.split("/", 1)[1]: v for k, v in zero_shot.items() if k.startswith("eval/")},
      "finetuned": {k.split("/", 1)[1]: v for k, v in final.items() if k.startswith("eval/")},
      "first_loss": train_rows[0]["loss"], "last_loss": train_rows[-1]["loss"],
      "queries_per_s": sum(r["queries_per_s"] for r in train_rows[1:]) / max(len(train_rows) - 1, 1),
      "seconds": seconds, "nproc": os.cpu_count(), "load_average": os.getloadavg(),
  }
  result["ndcg@10_gain"] = result["finetuned"]["ndcg@10"] - result["zero_shot"]["ndcg@10"]
  with open(os.path.join(workdir, "bench.json"), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
  logging.info("nDCG@10 on the pydoc test split: zero-shot %.4f, fine-tuned %.4f (%+.4f)",
               result["zero_shot"]["ndcg@10"], result["finetuned"]["ndcg@10"],
               result["ndcg@10_gain"])
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  app.run(main)
