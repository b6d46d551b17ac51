"""RoBERTa and XLM-RoBERTa backbones, checked against transformers' PyTorch models.

Small models of each family are built in PyTorch `transformers` from a config with random
weights (test-only), saved as safetensors, imported: our hidden states and MLM logits must equal
theirs on real multilingual text of mixed lengths with padding; exported back, the directory must
load in AutoModel / AutoTokenizer / sentence-transformers with the same outputs.
The tokenizers are trained here with HF `tokenizers` (a byte-level BPE as RoBERTa's and a
SentencePiece-style Unigram as XLM-R's) on real text that ships offline: the translations in
`humanize`'s message catalogues (36 languages; humanize comes with orbax-checkpoint) and the
standard library's docstrings.
"""

import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import tokenizers  # noqa: E402
from tokenizers import decoders, models, pre_tokenizers, processors, trainers  # noqa: E402

from retromae_jax.data.pretrain import masking  # noqa: E402

from retromae_jax.data import sources
from retromae_jax.data import tokenizer as tokenizer_lib  # noqa: E402
from retromae_jax.interop import export as export_lib  # noqa: E402
from retromae_jax.interop import hf as hf_interop  # noqa: E402
from retromae_jax.models import attention  # noqa: E402
from retromae_jax.models.bert import MLMHead, ModelConfig  # noqa: E402
from retromae_jax.objectives.enhanced.model import RetroMAE  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's / XLM-R's ids 0..3 (+ mask)


# ------------------------------------------------------------------------------------ real text


def _catalogue_texts() -> dict[str, list[str]]:
  """{language: its translated messages}, from humanize's .po catalogues."""
  humanize = pytest.importorskip("humanize")
  pattern = os.path.join(os.path.dirname(humanize.__file__), "locale", "*", "LC_MESSAGES", "*.po")
  texts = {}
  for path in sorted(glob.glob(pattern)):
    with open(path, encoding="utf-8") as f:
      found = re.findall(r'^msgstr(?:\[\d+\])? "(.+)"$', f.read(), re.M)
    texts[path.split(os.sep)[-3]] = [" ".join(m.replace("\\n", " ").split()) for m in found]
  assert len(texts) >= 30
  return texts


def _documents(texts: dict[str, list[str]], per_doc: int = 6) -> list[str]:
  """Each language's messages joined a few at a time: documents of mixed lengths."""
  docs = []
  for messages in texts.values():
    for start in range(0, len(messages), per_doc):
      docs.append(" ".join(messages[start:start + per_doc]))
  return docs


@pytest.fixture(scope="module")
def corpus():
  docs = _documents(_catalogue_texts())
  english = [" ".join(t.split()) for t in sources.pydoc_texts()[:150]]
  return docs, english


# ------------------------------------------------------------------------------------ tokenizers


def _train_bpe(texts, vocab_size=600) -> tokenizers.Tokenizer:
  """RoBERTa's tokenizer pipeline: byte-level pre-tokenizer, BPE, <s> ... </s>."""
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(texts, trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=SPECIALS,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
  return tok


def _train_unigram(texts, vocab_size=800) -> tokenizers.Tokenizer:
  """XLM-R's tokenizer pipeline: Metaspace ('▁'), SentencePiece Unigram, <s> ... </s>."""
  tok = tokenizers.Tokenizer(models.Unigram())
  tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
  tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
  tok.train_from_iterator(texts, trainers.UnigramTrainer(
      vocab_size=vocab_size, special_tokens=SPECIALS, unk_token="<unk>"))
  tok.post_processor = processors.TemplateProcessing(
      single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
      special_tokens=[("<s>", 0), ("</s>", 2)])
  return tok


def _save_tokenizer(tok, directory) -> str:
  """tokenizer.json plus the tokenizer_config.json AutoTokenizer reads the specials from."""
  os.makedirs(directory, exist_ok=True)
  tok.save(os.path.join(directory, "tokenizer.json"))
  with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
               "eos_token": "</s>", "cls_token": "<s>", "sep_token": "</s>",
               "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<mask>",
               "model_max_length": 64}, f)
  return str(directory)


@pytest.fixture(scope="module")
def tokenizer_dirs(corpus, tmp_path_factory):
  docs, english = corpus
  root = tmp_path_factory.mktemp("tokenizers")
  return {"roberta": _save_tokenizer(_train_bpe(docs + english), root / "bpe"),
          "xlm-roberta": _save_tokenizer(_train_unigram(docs + english), root / "unigram")}


# ------------------------------------------------------------------------------------ models

L_MAX = 64  # longest input of the tiny models


def _torch_model(family: str, vocab_size: int, directory) -> str:
  """A random-weight *ForMaskedLM of `family` saved as safetensors; every weight is random
  (LayerNorms and biases too), so no mapping error can hide behind an initial value."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  config_cls = {"roberta": transformers.RobertaConfig,
                "xlm-roberta": transformers.XLMRobertaConfig}[family]
  config = config_cls(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=4, intermediate_size=64,
                      max_position_embeddings=L_MAX + 2, type_vocab_size=1, pad_token_id=1,
                      bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)
  torch.manual_seed(0)
  model = transformers.AutoModelForMaskedLM.from_config(config)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "LayerNorm" in name or "layer_norm" in name:
        p.copy_(torch.randn_like(p) * 0.2 + (1.0 if name.endswith("weight") else 0.0))
      else:
        p.copy_(torch.randn_like(p) * 0.1)
  model.save_pretrained(str(directory), safe_serialization=True)
  return str(directory)


def _padded(tok, texts, pad_id, max_len=L_MAX):
  tok.no_padding()
  tok.enable_truncation(max_len)
  encoded = [e.ids for e in tok.encode_batch(texts)]
  ids = np.full((len(encoded), max(map(len, encoded))), pad_id, np.int32)
  mask = np.zeros_like(ids)
  for i, e in enumerate(encoded):
    ids[i, :len(e)] = e
    mask[i, :len(e)] = 1
  assert mask.sum(1).min() < mask.shape[1] // 2  # mixed lengths: real padding in the batch
  return ids, mask


def _params_shapes(cfg):
  """Shapes of our encoder ('bert') and MLM head ('mlm_head'), the targets of an import."""
  dummy = jnp.zeros((1, 8), jnp.int32)
  encoder = jax.eval_shape(lambda: nn.unbox(RetroMAE(cfg).init(
      jax.random.key(0), dummy, dummy, method="encode"))["params"])
  head = jax.eval_shape(lambda: nn.unbox(MLMHead(cfg).init(
      jax.random.key(0), jnp.zeros((1, cfg.hidden_size)),
      jnp.zeros((cfg.vocab_size, cfg.hidden_size))))["params"])
  return {**encoder, "mlm_head": head}


def _our_outputs(cfg, params, ids, mask):
  hidden = RetroMAE(cfg).apply({"params": params}, ids, mask, method="encode")
  words = params["bert"]["embeddings"]["word_embeddings"]["embedding"]
  logits = MLMHead(cfg).apply({"params": params["mlm_head"]}, hidden, words)
  return np.asarray(hidden), np.asarray(logits)


def _torch_outputs(directory, ids, mask, auto="AutoModelForMaskedLM"):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  model = getattr(transformers, auto).from_pretrained(directory).eval()
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids, dtype=torch.long),
                attention_mask=torch.tensor(mask, dtype=torch.long), output_hidden_states=True)
  logits = out.logits.numpy() if hasattr(out, "logits") else None
  hidden = out.hidden_states[-1] if logits is not None else out.last_hidden_state
  return hidden.numpy(), logits


@pytest.fixture(scope="module", params=["roberta", "xlm-roberta"])
def family_model(request, corpus, tokenizer_dirs, tmp_path_factory):
  family = request.param
  tok = tokenizer_lib.load_tokenizer(tokenizer_dirs[family])
  directory = _torch_model(family, tok.get_vocab_size(), tmp_path_factory.mktemp(family))
  docs, _ = corpus
  texts = docs[::9][:12]  # many languages, short and long
  ids, mask = _padded(tok, texts, tokenizer_lib.special_ids(tok).pad)
  return family, directory, tok, texts, ids, mask, tokenizer_dirs[family]


def test_import_matches_transformers(family_model):
  family, directory, _, _, ids, mask, _ = family_model
  overrides = hf_interop.model_overrides(hf_interop.read_hf_config(directory))
  assert (overrides["family"], overrides["pad_token_id"], overrides["type_vocab_size"],
          overrides["layer_norm_eps"]) == (family, 1, 1, 1e-5)
  torch_hidden, torch_logits = _torch_outputs(directory, ids, mask)
  for impl in ("dense", "chunked"):  # chunked: blocks of 8 queries, a ragged last block
    cfg = ModelConfig(**overrides, attention=impl, attention_block=8)
    params = hf_interop.load_hf_bert(directory, _params_shapes(cfg))
    hidden, logits = _our_outputs(cfg, params, ids, mask)
    real = mask.astype(bool)
    assert np.abs(hidden - torch_hidden)[real].max() <= 1e-4, impl
    assert np.abs(logits - torch_logits)[real].max() <= 1e-4, impl
    # Padding rows too: their position ids (padding_idx) follow HF's rule.
    assert np.abs(hidden - torch_hidden).max() <= 1e-4, impl


def test_export_loads_in_transformers_and_sentence_transformers(family_model, tmp_path):
  family, directory, tok, texts, ids, mask, tok_dir = family_model
  transformers = pytest.importorskip("transformers")
  st = pytest.importorskip("sentence_transformers")
  cfg = ModelConfig(**hf_interop.model_overrides(hf_interop.read_hf_config(directory)))
  params = hf_interop.load_hf_bert(directory, _params_shapes(cfg))
  out = str(tmp_path / "encoder")
  hf_interop.save_hf_bert({k: params[k] for k in ("bert", "mlm_head")}, cfg, out,
                          tokenizer_dir=tok_dir)
  with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
    written = json.load(f)
  assert written["model_type"] == family and written["pad_token_id"] == 1
  reference_hidden, reference_logits = _torch_outputs(directory, ids, mask)
  hidden, logits = _torch_outputs(out, ids, mask)
  real = mask.astype(bool)
  assert np.abs(hidden - reference_hidden)[real].max() <= 1e-4
  assert np.abs(logits - reference_logits)[real].max() <= 1e-4
  base_hidden, _ = _torch_outputs(out, ids, mask, auto="AutoModel")
  assert np.abs(base_hidden - reference_hidden)[real].max() <= 1e-4

  hf_tok = transformers.AutoTokenizer.from_pretrained(out)
  assert hf_tok(texts, truncation=True, max_length=L_MAX)["input_ids"] == [  # ours truncates too
      e.ids for e in tok.encode_batch(texts)]
  st_dir = export_lib.export_sentence_transformers(out, str(tmp_path / "st"), cfg.hidden_size,
                                                   cfg.max_length)
  vectors = st.SentenceTransformer(st_dir, device="cpu").encode(texts, convert_to_numpy=True)
  cls = reference_hidden[:, 0] / np.linalg.norm(reference_hidden[:, 0], axis=1, keepdims=True)
  assert np.abs(vectors - cls).max() <= 1e-4


# ------------------------------------------------------------------------------------ masking


def _reference_words(text: str, offsets) -> list[int]:
  """Whitespace-delimited word index of each token, from the text and the token offsets alone
  (no vocabulary markers): a token belongs to the word holding its first non-space character;
  a token of spaces only (a bare '▁' / 'Ġ') to the word that follows it."""
  word_at = np.cumsum([c.isspace() for c in text] + [True])  # word index by character
  words = []
  for start, end in offsets:
    anchor = start
    while anchor < end and text[anchor].isspace():
      anchor += 1
    while anchor < len(text) and text[anchor].isspace():  # spaces only: the next word's
      anchor += 1
    words.append(int(word_at[anchor]))
  return words


@pytest.fixture(scope="module")
def trained_tokenizers(tokenizer_dirs):
  return {family: tokenizer_lib.load_tokenizer(d) for family, d in tokenizer_dirs.items()}


@pytest.mark.parametrize("family, marker", [("roberta", ("start", "\u0120")),
                                            ("xlm-roberta", ("start", "\u2581"))])
def test_word_starts_follow_whitespace_words(trained_tokenizers, corpus, family, marker):
  from retromae_jax.data import word_starts
  tok = trained_tokenizers[family]
  assert word_starts.marker(tok) == marker
  table = tokenizer_lib.continuation_table(tok)
  docs, english = corpus
  tok.no_truncation()
  checked = 0
  for text in docs + english[:40]:
    enc = tok.encode(text, add_special_tokens=False)
    if tok.token_to_id("<unk>") in enc.ids:
      continue
    reference = _reference_words(text, enc.offsets)
    starts = [i == 0 or reference[i] != reference[i - 1] for i in range(len(enc.ids))]
    ours = [i == 0 or not table[t] for i, t in enumerate(enc.ids)]
    assert ours == starts, (text, enc.tokens)
    checked += 1
  assert checked > 0.9 * len(docs + english[:40])


def _masked_batches(tok, texts, seeds, max_len=128):
  ids_ = tokenizer_lib.special_ids(tok)
  spec = masking.MaskingSpec(
      max_seq_length=max_len, encoder_mask_ratio=0.3, decoder_mask_ratio=0.5,
      decoder_pool_size=16, mask_id=ids_.mask, vocab_size=ids_.vocab_size,
      is_continuation=tokenizer_lib.continuation_table(tok),
      is_special=tokenizer_lib.special_table(tok), pad_id=ids_.pad)
  tok.enable_truncation(max_len)
  encoded = tok.encode_batch(texts)
  ids = np.full((len(texts), max_len), ids_.pad, np.int32)
  for i, e in enumerate(encoded):
    ids[i, :len(e.ids)] = e.ids
  lengths = np.array([len(e.ids) for e in encoded])
  for seed in seeds:
    yield ids, lengths, encoded, masking.make_batch(ids, lengths, spec, np.random.default_rng(seed))


@pytest.mark.parametrize("family", ["roberta", "xlm-roberta"])
def test_whole_word_masking_statistics_on_multilingual_text(trained_tokenizers, corpus, family):
  """Whole words only, the budget k = max(1, round(0.3 n)) never exceeded and nearly reached,
  80/10/10 within 2 points, on 36 languages' text."""
  tok = trained_tokenizers[family]
  docs, _ = corpus
  mask_id = tokenizer_lib.special_ids(tok).mask
  counts = np.zeros(3)  # [MASK], another id, unchanged
  masked_total = budget_total = 0
  for ids, lengths, encoded, batch in _masked_batches(tok, docs, seeds=range(6)):
    for row, enc in enumerate(encoded):
      positions = batch["encoder_positions"][row][batch["encoder_targets"][row] >= 0]
      text_tokens = np.arange(1, lengths[row] - 1)
      offsets = [enc.offsets[i] for i in text_tokens]
      words = np.array(_reference_words(docs[row], offsets))
      chosen = np.isin(text_tokens, positions)
      for word in np.unique(words[chosen]):  # every token of a chosen word is chosen
        assert chosen[words == word].all(), (docs[row], enc.tokens)
      budget = max(1, round(lengths[row] * 0.3))
      assert len(positions) <= budget
      masked_total += len(positions)
      budget_total += budget
      corrupted = batch["encoder_input_ids"][row][positions]
      original = ids[row][positions]
      counts += [np.sum(corrupted == mask_id),
                 np.sum((corrupted != mask_id) & (corrupted != original)),
                 np.sum(corrupted == original)]
  # Scripts written without spaces (Chinese, Japanese) make long words that seldom fit the
  # budget exactly; over 36 languages the budget is still nearly spent.
  assert masked_total / budget_total > 0.9
  shares = counts / counts.sum()
  assert counts.sum() > 5000
  np.testing.assert_allclose(shares, [0.8, 0.1, 0.1], atol=0.02)


# ------------------------------------------------------------------------------------ attention


def _attention_inputs(seq_len=37, heads=3, head_dim=8, seed=0):
  rng = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(rng.normal(size=(2, seq_len, heads, head_dim)), jnp.float32)
             for _ in range(3))
  lengths = np.array([seq_len, 11])
  key_mask = (np.arange(seq_len) < lengths[:, None])[:, None, None, :]  # [B, 1, 1, L]
  # Per-row masks as the decoder's, with fully masked rows (padding queries) in example 1.
  rows = rng.random((2, 1, seq_len, seq_len)) < 0.6
  rows &= key_mask
  rows[1, :, 11:] = False
  return q, k, v, jnp.asarray(key_mask), jnp.asarray(rows)


def _numpy_attention(q, k, v, mask):
  """The reference: softmax over the visible keys (all keys, uniformly, for a masked-out row)."""
  q, k, v, mask = map(np.asarray, (q, k, v, mask))
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  logits = np.where(mask, logits, np.finfo(np.float32).min)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", weights, v)


@pytest.mark.parametrize("which_mask", ["keys", "rows"])
def test_chunked_attention_equals_dense_and_numpy(which_mask):
  q, k, v, key_mask, rows = _attention_inputs()
  mask = key_mask if which_mask == "keys" else rows
  expected = _numpy_attention(q, k, v, mask)
  dense = attention.attend(q, k, v, mask, implementation="dense")
  chunked = attention.attend(q, k, v, mask, implementation="chunked", block=8)  # 5 blocks, ragged
  np.testing.assert_allclose(dense, expected, atol=1e-5)
  np.testing.assert_allclose(chunked, expected, atol=1e-5)
  assert attention.resolve("auto", 512, 1024) == "dense"  # default: today's numerics
  assert attention.resolve("auto", 4096, 1024) == "chunked"

  loss = lambda impl: lambda q, k, v: jnp.sum(jnp.sin(attention.attend(
      q, k, v, mask, implementation=impl, block=8)))
  grads_dense = jax.grad(loss("dense"), argnums=(0, 1, 2))(q, k, v)
  grads_chunked = jax.grad(loss("chunked"), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(grads_dense, grads_chunked):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_chunked_attention_dropout_keeps_its_rate():
  q, k, v, key_mask, _ = _attention_inputs(seq_len=64, heads=2)
  v = jnp.ones_like(v)  # each output is the sum of the kept weights / keep probability
  out = attention.attend(q, k, v, key_mask, implementation="chunked", block=16, dropout_rate=0.25,
                         dropout_rng=jax.random.key(3), deterministic=False)
  np.testing.assert_allclose(float(out[0].mean()), 1.0, atol=0.03)
  assert not np.allclose(out[0], 1.0)  # and it does drop


def _train_step_temp_bytes(seq_len: int, impl: str) -> int:
  """XLA's planned temporary memory for one gradient of a tiny RoBERTa encoder (no timing)."""
  from retromae_jax.models.bert import BertModel
  cfg = ModelConfig(vocab_size=1000, hidden_size=64, num_layers=2, num_heads=4,
                    intermediate_size=128, max_position_embeddings=seq_len + 2, family="roberta",
                    pad_token_id=1, type_vocab_size=1, attention=impl, attention_block=256,
                    dropout_rate=0.0, attention_dropout_rate=0.0)
  model = BertModel(cfg)
  ids = jnp.ones((1, seq_len), jnp.int32)
  params = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), ids, ids, True)))
  loss = lambda p: model.apply(p, ids, ids, True).mean()
  return jax.jit(jax.grad(loss)).lower(params).compile().memory_analysis().temp_size_in_bytes


def test_chunked_attention_memory_grows_linearly():
  """4x the length: 'chunked' needs about 4x the memory, 'dense' (the [L, L] logits) far more."""
  chunked = _train_step_temp_bytes(1024, "chunked") / _train_step_temp_bytes(256, "chunked")
  dense = _train_step_temp_bytes(1024, "dense") / _train_step_temp_bytes(256, "dense")
  assert chunked < 5.5 and dense > 8, (chunked, dense)


# ------------------------------------------------------------------------------------ long inputs


def test_position_table_extension(family_model):
  """model_overrides(max_length) grows the table; load_hf_bert fills it from the stored rows."""
  _, directory, _, _, ids, mask, _ = family_model
  hf_config = hf_interop.read_hf_config(directory)
  from safetensors.numpy import load_file
  stored = load_file(os.path.join(directory, "model.safetensors"))[
      "roberta.embeddings.position_embeddings.weight"]  # [66, D]: 2 offset rows + 64 learned
  for method in ("tile", "interpolate"):
    cfg = ModelConfig(**hf_interop.model_overrides(hf_config, max_length=200))
    assert (cfg.max_position_embeddings, cfg.max_length) == (202, 200)
    params = hf_interop.load_hf_bert(directory, _params_shapes(cfg), position_extension=method)
    table = np.asarray(params["bert"]["embeddings"]["position_embeddings"]["embedding"])
    np.testing.assert_array_equal(table[:2], stored[:2])  # the offset rows are no positions
    learned = stored[2:]
    if method == "tile":  # the checkpoint's rows unchanged, then copies of them
      np.testing.assert_array_equal(table[2:2 + 64], learned)
      np.testing.assert_array_equal(table[2 + 64:2 + 128], learned)
      np.testing.assert_array_equal(table[2 + 192:], learned[:8])
    else:
      where = np.linspace(0, 63, 200)
      expected = np.stack([np.interp(where, np.arange(64), learned[:, d])
                           for d in range(learned.shape[1])], axis=1)
      np.testing.assert_allclose(table[2:], expected, atol=1e-6)
    if method == "tile":  # inputs the checkpoint covered still give its outputs
      hidden, _ = _our_outputs(cfg, params, ids, mask)
      torch_hidden, _ = _torch_outputs(directory, ids, mask)
      assert np.abs(hidden - torch_hidden)[mask.astype(bool)].max() <= 1e-4
    # and a 200-token input runs.
    long_ids = np.tile(ids[:1, 1:-1], (1, 10))[:, :200]
    long_hidden, _ = _our_outputs(cfg, params, long_ids, np.ones_like(long_ids))
    assert np.isfinite(long_hidden).all()


# ------------------------------------------------------------------------------------ end to end


def _main(config, workdir, *overrides):
  cmd = [sys.executable, "-m", "retromae_jax.main", f"--config={config}", f"--workdir={workdir}",
         *overrides]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_xlm_roberta_pretraining_then_finetuning(tokenizer_dirs, tmp_path):
  """From a (random) XLM-R checkpoint with its SentencePiece tokenizer: RetroMAE pretraining,
  then contrastive fine-tuning of its export; both exports are XLM-R directories transformers
  loads."""
  transformers = pytest.importorskip("transformers")
  tok_dir = tokenizer_dirs["xlm-roberta"]
  vocab = tokenizer_lib.load_tokenizer(tok_dir).get_vocab_size()
  init = _torch_model("xlm-roberta", vocab, tmp_path / "init")
  pretrained = str(tmp_path / "pretrain")
  rows = _main("configs/base.py:smoke", pretrained, f"--config.tokenizer={tok_dir}",
               f"--config.init.hf_dir={init}", "--config.batch_size=4",
               "--config.data.max_seq_length=64", "--config.total_steps=2",
               "--config.log_every=1", "--config.checkpoint_every=2",
               "--config.data.shuffle_buffer=100")
  assert [r["step"] for r in rows] == [1, 2]
  assert all(np.isfinite(r["enc_loss"]) and np.isfinite(r["dec_loss"]) for r in rows)
  encoder = os.path.join(pretrained, "export", "encoder")
  with open(os.path.join(encoder, "config.json"), encoding="utf-8") as f:
    written = json.load(f)
  assert (written["model_type"], written["architectures"]) == ("xlm-roberta",
                                                               ["XLMRobertaForMaskedLM"])
  transformers.AutoModelForMaskedLM.from_pretrained(encoder)

  finetuned = str(tmp_path / "finetune")
  rows = _main("configs/finetune.py:smoke", finetuned, f"--config.init.model={pretrained}",
               "--config.batch_size=4", "--config.total_steps=2", "--config.log_every=1",
               "--config.checkpoint_every=2", "--config.eval.data=")
  assert [r["step"] for r in rows if "loss" in r] == [1, 2]
  assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
  model_dir = os.path.join(finetuned, "export", "encoder")
  with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
    assert json.load(f)["architectures"] == ["XLMRobertaModel"]
  transformers.AutoModel.from_pretrained(model_dir)


_STEP_MEMORY = re.compile(r"Compiled step per device \(.*?\): arguments ([\d.]+) MiB, "
                          r"outputs [\d.]+ MiB, temporaries ([\d.]+) MiB")


def _pretrain_step_memory(tokenizer_dir, workdir, seq_len, attention_impl):
  """(arguments + temporaries MiB of the compiled update step, peak RSS MiB of the process) of
  a 2-step RoBERTa pretraining run at seq_len, read from the trainer's log and the kernel."""
  script = ("import atexit, resource, runpy, sys; atexit.register(lambda: print('PEAK_RSS_KIB', "
            "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)); "
            "sys.argv = sys.argv[1:]; runpy.run_module('retromae_jax.main', run_name='__main__')")
  cmd = [sys.executable, "-c", script, "main", "--config=configs/base.py:smoke",
         f"--workdir={workdir}", f"--config.tokenizer={tokenizer_dir}",
         "--config.model.family=roberta", "--config.model.type_vocab_size=1",
         "--config.model.layer_norm_eps=1e-5", "--config.model.hidden_size=64",
         "--config.model.num_layers=2", "--config.model.num_heads=4",
         "--config.model.intermediate_size=128", f"--config.model.attention={attention_impl}",
         f"--config.model.max_position_embeddings={seq_len + 2}",
         f"--config.data.max_seq_length={seq_len}", "--config.data.source=pydoc:modules",
         "--config.batch_size=2", "--config.total_steps=2", "--config.log_every=1",
         "--config.checkpoint_every=2", "--config.data.shuffle_buffer=10"]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
  assert proc.returncode == 0, proc.stderr[-4000:]
  arguments, temporaries = map(float, _STEP_MEMORY.search(proc.stderr).groups())
  peak_rss = int(re.search(r"PEAK_RSS_KIB (\d+)", proc.stderr).group(1)) / 1024
  return arguments + temporaries, peak_rss


@pytest.mark.slow
def test_long_input_pretraining_memory(tokenizer_dirs, tmp_path):
  """RetroMAE pretraining of a tiny RoBERTa at 4096 tokens against 512 (batch 2): the step's
  memory with chunked attention, and with the dense [L, L] logits for contrast. Memory, not time:
  these figures hold on a shared machine."""
  tok_dir = tokenizer_dirs["roberta"]
  figures = {}
  for seq_len, impl in ((512, "auto"), (4096, "chunked"), (4096, "dense")):
    figures[seq_len, impl] = _pretrain_step_memory(tok_dir, tmp_path / f"{seq_len}_{impl}",
                                                   seq_len, impl)
  for (seq_len, impl), (step, rss) in figures.items():
    print(f"L={seq_len} attention={impl}: step {step:.1f} MiB, process peak RSS {rss:.0f} MiB")
  short, long_chunked, long_dense = (figures[k][0] for k in figures)
  assert long_chunked < 0.5 * long_dense
  assert long_chunked < 16 * short  # 8x the tokens; the decoder's boolean [L, L] row masks remain
