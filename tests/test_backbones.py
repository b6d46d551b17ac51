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

from retromae_jax.data import masking, sources  # noqa: E402
from retromae_jax.data import tokenizer as tokenizer_lib  # noqa: E402
from retromae_jax.interop import export as export_lib  # noqa: E402
from retromae_jax.interop import hf as hf_interop  # noqa: E402
from retromae_jax.models import attention  # noqa: E402
from retromae_jax.models.bert import MLMHead, ModelConfig  # noqa: E402
from retromae_jax.models.retromae import RetroMAE  # noqa: E402

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
