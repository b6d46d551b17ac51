"""Contrastive fine-tuning end to end, through its command line, on the offline pydoc set."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = ("tokens_per_s", "queries_per_s", "steps_per_s", "mfu")
SMALL = ["--config.batch_size=8", "--config.log_every=1", "--config.checkpoint_every=2",
         "--config.total_steps=4"]


def _run(workdir, *overrides, check=True):
  cmd = [sys.executable, "-m", "retromae_jax.main", "--config=configs/finetune.py:smoke",
         f"--workdir={workdir}", *overrides]
  # (tests/conftest.py turns XLA's backend optimisations off for every program tests start.)
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
  if check and proc.returncode:
    raise AssertionError(proc.stderr[-4000:])
  return proc


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def _small_beir(directory):
  """Six questions about the standard library and twelve documents (half answer none)."""
  docs = {
      "queue.qsize": ("queue.Queue.qsize()", "Return the approximate size of the queue."),
      "os.getcwd": ("os.getcwd()", "Return a string representing the current working directory."),
      "json.loads": ("json.loads(s)", "Deserialize s, a str or bytes holding a JSON document."),
      "math.gcd": ("math.gcd(*integers)", "Return the greatest common divisor of the integers."),
      "time.sleep": ("time.sleep(secs)", "Suspend execution for the given number of seconds."),
      "shutil.copy": ("shutil.copy(src, dst)", "Copy the file src to the file or directory dst."),
      "random.shuffle": ("random.shuffle(x)", "Shuffle the sequence x in place."),
      "re.escape": ("re.escape(pattern)", "Escape special characters in a string."),
      "glob.glob": ("glob.glob(pathname)", "Return a list of paths matching a pathname pattern."),
      "zlib.crc32": ("zlib.crc32(data)", "Compute a CRC-32 checksum of data."),
      "heapq.heappush": ("heapq.heappush(heap, item)", "Push item onto heap, keeping the invariant."),
      "abs": ("abs(x)", "Return the absolute value of a number."),
  }
  queries = {"q1": "How many items are waiting in the queue?",
             "q2": "Which folder is the process running in?",
             "q3": "Parse a JSON string into Python objects.",
             "q4": "Largest number dividing all the given integers.",
             "q5": "Pause the program for a while.",
             "q6": "Duplicate a file to another location."}
  targets = ["queue.qsize", "os.getcwd", "json.loads", "math.gcd", "time.sleep", "shutil.copy"]
  from retromae_jax.data.evalsets import beir
  beir.write(str(directory), docs, queries,
             {"test": {q: {d: 1} for q, d in zip(queries, targets)}})
  return str(directory)


def test_smoke_finetune_evaluates_exports_and_resumes(tmp_path):
  workdir = str(tmp_path / "run")
  # Trains on the pydoc set's train split (the preset); evaluates on a small folder (speed).
  _run(workdir, *SMALL, f"--config.eval.data={_small_beir(tmp_path / 'beir')}",
       "--config.eval.every_steps=2")
  rows = _metrics(workdir)
  train_rows = [r for r in rows if "loss" in r]
  eval_rows = [r for r in rows if "eval/ndcg@10" in r]
  assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
  assert [r["step"] for r in eval_rows] == [0, 2, 4]  # the zero-shot score first
  for r in train_rows:
    for key in ("loss", "accuracy", "grad_norm", "lr", "queries_per_s", "tokens_per_s"):
      assert np.isfinite(r[key]), (key, r)
    assert 0 <= r["accuracy"] <= 1
  assert all(0 <= r["eval/ndcg@10"] <= 1 for r in eval_rows)

  # The best evaluated step is exported; so is the last one, both as HF BertModel directories.
  with open(os.path.join(workdir, "export", "best", "best_eval.json"), encoding="utf-8") as f:
    best = json.load(f)
  best_row = max(eval_rows, key=lambda r: r["eval/ndcg@10"])  # the first of ties
  assert (best["step"], best["value"]) == (best_row["step"], best_row["eval/ndcg@10"])
  export = os.path.join(workdir, "export", "encoder")
  with open(os.path.join(export, "config.json"), encoding="utf-8") as f:
    assert json.load(f)["architectures"] == ["BertModel"]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]

  from retromae_jax.evaluators import embed as encode
  vectors = encode.embed_texts(workdir, ["Return the number of items in the queue.",
                                         "Open a file and return a stream."],
                               normalize=True, max_len=16)
  assert vectors.shape == (2, 128) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)

  # Lose everything after step 2 and run again (without evaluation): it resumes from step 2 and
  # steps 3-4 reproduce the uninterrupted run (same groups, dropout and updates).
  shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))
  shutil.rmtree(os.path.join(workdir, "export", "encoder"))
  with open(os.path.join(workdir, "metrics.jsonl"), "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows if r["step"] <= 2)
  proc = _run(workdir, *SMALL, "--config.eval.data=")
  assert f"Resuming from {workdir}/checkpoints/2" in proc.stderr
  resumed = [r for r in _metrics(workdir) if "loss" in r]
  strip = lambda r: {k: v for k, v in r.items() if k not in TIMING}
  assert [strip(r) for r in resumed] == [strip(r) for r in train_rows]
  assert os.path.isfile(os.path.join(workdir, "export", "encoder", "model.safetensors"))


@pytest.mark.parametrize("key, value, message", [
    ("data.group_size", 0, "config.data.group_size: expected >= 1"),
    ("model.similarity", "l2", "config.model.similarity: expected one of ('cosine', 'dot')"),
    ("eval.metric", "ndcg10", "config.eval.metric: measure 'ndcg10'"),
    ("data.passage_max_len", 512, "config.data.passage_max_len: expected "
     "3..model.max_position_embeddings (128), got 512"),
    ("gradient_cache.chunk_size", 3, "config.gradient_cache.chunk_size: expected a divisor of "
     "batch_size (16), got 3"),
    ("data.train", "", "config.data.train: expected a source"),
])
def test_invalid_settings_fail_naming_the_key(key, value, message):
  from configs import finetune as finetune_config
  from retromae_jax.trainers import validation
  config = finetune_config.get_config("smoke")
  section, name = key.split(".")
  config[section][name] = value
  with pytest.raises(ValueError, match=re.escape(message)):
    validation.validate(config)


def test_lengths_are_checked_against_the_init_models_positions_once_known():
  from configs import finetune as finetune_config
  from retromae_jax.trainers import validation
  config = finetune_config.get_config("smoke")  # max_position_embeddings 128
  config.data.passage_max_len = 256
  config.init.model = "/some/hf/dir"  # its config.json decides, read at start-up
  validation.validate(config)
  with pytest.raises(ValueError, match="passage_max_len"):
    validation.validate(config, shape_known=True)
  with pytest.raises(ValueError, match="not divisible by the 3 data-parallel devices"):
    validation.validate(finetune_config.get_config("smoke"), num_data_parallel=3)


def _train_losses(workdir, devices, *overrides):
  env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices))
  cmd = [sys.executable, "-m", "retromae_jax.main", "--config=configs/finetune.py:smoke",
         f"--workdir={workdir}", "--config.batch_size=8", "--config.total_steps=3",
         "--config.log_every=1", "--config.eval.data=", "--config.model.dropout_rate=0.1",
         "--config.model.attention_dropout_rate=0.1", *overrides]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return [(r["loss"], r["grad_norm"]) for r in _metrics(workdir)]


@pytest.fixture(scope="module")
def one_device_losses(tmp_path_factory):
  return _train_losses(str(tmp_path_factory.mktemp("one_device")), 1)


@pytest.mark.slow
@pytest.mark.parametrize("devices, overrides", [
    (8, ("--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2")),
    (8, ("--config.mesh.data=8",)),
    (1, ("--config.gradient_cache.chunk_size=2",)),
    (8, ("--config.mesh.data=4", "--config.mesh.fsdp=2", "--config.gradient_cache.chunk_size=8")),
])
def test_training_does_not_depend_on_the_mesh_or_the_gradient_cache(
    tmp_path, devices, overrides, one_device_losses):
  """Three steps with dropout: the same losses and gradient norms on 1 device, on 8 devices
  (the global batch's negatives span them all), and with the gradient cache."""
  reference = one_device_losses
  other = _train_losses(str(tmp_path / "other"), devices, *overrides)
  assert len(reference) == len(other) == 3
  for (loss, norm), (other_loss, other_norm) in zip(reference, other):
    assert other_loss == pytest.approx(loss, rel=1e-5)
    assert other_norm == pytest.approx(norm, rel=1e-4)


# ------------------------------------------------------------ Distillation, mixed datasets,
# Matryoshka, early stopping and the sentence-transformers export, in one run.

QUERY_INSTRUCTION = "Represent this question for retrieval: "


@pytest.fixture(scope="module")
def featured_run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("featured")
  sources = []
  for name in ("alpha", "beta"):
    path = tmp / f"{name}.jsonl"
    path.write_text("".join(json.dumps({
        "query": f"what does {name} helper {i} return", "pos": [f"{name} helper {i} returns {i}"],
        "neg": [f"{name} helper {i} raises", f"{name} helper {i} loops"],
        "pos_scores": [3.0], "neg_scores": [1.0, -1.0]}) + "\n" for i in range(16)))
    sources.append(f"jsonl:{path}")
  workdir = str(tmp / "run")
  # Learning rate 0: every evaluation scores the same model, so with patience 1 the run stops at
  # the first evaluation after the start (no better score), step 2 of 6.
  _run(workdir, "--config.batch_size=8", "--config.log_every=1", "--config.total_steps=6",
       "--config.checkpoint_every=100", f"--config.data.train={sources[0]}@2,"
       f"{sources[1]}@1;in_batch_negatives=false", "--config.data.group_size=3",
       f"--config.data.query_instruction={QUERY_INSTRUCTION}", "--config.loss.kd_weight=0.5",
       "--config.loss.matryoshka_dims=128,64", "--config.optim.learning_rate=0",
       f"--config.eval.data={_small_beir(tmp / 'beir')}", "--config.eval.every_steps=2",
       "--config.eval.patience=1")
  return workdir


def test_early_stopping_distillation_and_matryoshka_rows(featured_run):
  rows = _metrics(featured_run)
  train_rows = [r for r in rows if "loss" in r]
  eval_rows = [r for r in rows if "eval/ndcg@10" in r]
  assert [r["step"] for r in train_rows] == [1, 2]  # stopped after the step-2 evaluation
  assert [r["step"] for r in eval_rows] == [0, 2]
  assert all(np.isfinite(r["kd_loss"]) and r["kd_loss"] > 0 for r in train_rows)
  assert all(0 <= r["eval/dim64/ndcg@10"] <= 1 for r in eval_rows)
  with open(os.path.join(featured_run, "export", "best", "best_eval.json"), encoding="utf-8") as f:
    assert json.load(f)["step"] == 0  # the best step was exported before the stop


def test_sentence_transformers_export_carries_prompts_dims_and_card(featured_run):
  import warnings
  warnings.filterwarnings("ignore", category=DeprecationWarning)
  import yaml
  from sentence_transformers import SentenceTransformer
  from retromae_jax.evaluators import embed as encode

  st_dir = os.path.join(featured_run, "export", "sentence-transformers")
  model = SentenceTransformer(st_dir, device="cpu")
  assert model.prompts["query"] == QUERY_INSTRUCTION
  assert model.similarity_fn_name == "cosine"
  queries = ["How many items are waiting in the queue?", "Pause the program for a while."]
  theirs = model.encode(queries, prompt_name="query", normalize_embeddings=True)
  ours = encode.embed_texts(featured_run, [QUERY_INSTRUCTION + q for q in queries],
                            pooling="cls", normalize=True, max_len=64)
  assert np.min(np.sum(theirs * ours, axis=1)) >= 0.99999
  with open(os.path.join(st_dir, "config_sentence_transformers.json"), encoding="utf-8") as f:
    assert json.load(f)["matryoshka_dims"] == [128, 64]

  # The model card: YAML metadata first; its metrics are the run's own metrics.jsonl rows.
  with open(os.path.join(st_dir, "README.md"), encoding="utf-8") as f:
    card = f.read()
  assert card.startswith("---\n")
  metadata = yaml.safe_load(card.split("---\n")[1])
  assert "loss:MatryoshkaLoss" in metadata["tags"] and "loss:DistillKLDivLoss" in metadata["tags"]
  assert metadata["datasets"][0].startswith("jsonl:")
  exported = [r for r in _metrics(featured_run) if "eval/ndcg@10" in r and r["step"] == 2][0]
  card_metrics = {m["type"]: m["value"] for m in
                  metadata["model-index"][0]["results"][0]["metrics"]}
  assert card_metrics["cosine_ndcg@10"] == exported["eval/ndcg@10"]
  assert card_metrics["dim_64_cosine_ndcg@10"] == exported["eval/dim64/ndcg@10"]
  assert len(card_metrics) == len([k for k in exported if k.startswith("eval/")])
  table = [line for line in card.splitlines() if line.startswith("| 0 |") or line.startswith("| 2 |")]
  assert len(table) == 2 and repr(exported["eval/ndcg@10"]) in table[1]


def test_score_tool_writes_the_teachers_cosines(featured_run, tmp_path):
  import warnings
  warnings.filterwarnings("ignore", category=DeprecationWarning)
  from sentence_transformers import SentenceTransformer
  lines = [{"query": "Parse a JSON string.", "pos": ["json.loads(s) deserializes s"],
            "neg": ["time.sleep(secs)", "abs(x)"], "id": 7},
           {"query": "Copy a file.", "pos": ["shutil.copy(src, dst)"]}]
  source, scored = tmp_path / "pairs.jsonl", tmp_path / "scored.jsonl"
  source.write_text("".join(json.dumps(x) + "\n" for x in lines))
  proc = subprocess.run([sys.executable, "-m", "retromae_jax.tools.score",
                         f"--model={featured_run}", f"--input={source}", f"--output={scored}",
                         "--max_len=64"], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = [json.loads(x) for x in scored.read_text().splitlines()]
  assert out[0]["id"] == 7 and out[1]["neg_scores"] == []
  model = SentenceTransformer(os.path.join(featured_run, "export", "sentence-transformers"),
                              device="cpu")
  for line in out:
    q = model.encode([line["query"]])
    for name in ("pos", "neg"):
      if line.get(name):
        expected = model.similarity(q, model.encode(line[name]))[0].numpy()
        np.testing.assert_allclose(line[f"{name}_scores"], expected, atol=1e-5)
