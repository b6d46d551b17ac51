"""Trains a BERT WordPiece tokenizer on local text, with no hub download.

  python -m retromae_jax.tools.train_tokenizer --input=GLOB --vocab_size=N --out=DIR

--input: a GLOB of .jsonl[.gz] files ({"text": ...} lines) or of text files (one document per
line), or any data.source spec (jsonl:GLOB, text:GLOB, tfds:NAME, pydoc). DIR gets
tokenizer.json, vocab.txt, tokenizer_config.json and special_tokens_map.json, loadable by
retromae_jax.data.tokenizer.load_tokenizer(DIR) and by transformers' AutoTokenizer.
"""

import json
from collections.abc import Iterator
from pathlib import Path

import tokenizers
from absl import flags, logging
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from retromae_jax.data import source_spec as source_strings
from retromae_jax.data import sources
from retromae_jax.tools import cli

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4 in this order


def source_spec(spec: str) -> str:
  """A bare GLOB becomes jsonl:GLOB (.jsonl / .jsonl.gz) or text:GLOB (anything else)."""
  try:
    return str(source_strings.parse(spec, "--input", "", schemes=("jsonl", "text", "tfds", "pydoc")))
  except ValueError:
    pass
  return f"jsonl:{spec}" if spec.removesuffix(".gz").endswith(".jsonl") else f"text:{spec}"


def train(texts: Iterator[str], vocab_size: int, min_frequency: int = 2) -> tokenizers.Tokenizer:
  """A lowercasing BERT WordPiece tokenizer whose post-processor adds [CLS] ... [SEP]."""
  tok = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
  tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=None)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.decoder = decoders.WordPiece(prefix="##")
  trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=list(SPECIAL_TOKENS),
                                      continuing_subword_prefix="##")
  tok.train_from_iterator(texts, trainer=trainer)
  cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
  tok.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
      special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
  return tok


def save(tok: tokenizers.Tokenizer, out: str) -> None:
  """tokenizer.json plus the BERT files that transformers' BertTokenizer(Fast) reads."""
  out_dir = Path(out)
  out_dir.mkdir(parents=True, exist_ok=True)
  tok.save(str(out_dir / "tokenizer.json"))
  vocab = sorted(tok.get_vocab().items(), key=lambda item: item[1])
  (out_dir / "vocab.txt").write_text("".join(token + "\n" for token, _ in vocab),
                                     encoding="utf-8")
  names = dict(zip(("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"),
                   SPECIAL_TOKENS))
  (out_dir / "special_tokens_map.json").write_text(json.dumps(names, indent=2))
  config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True,
            "tokenize_chinese_chars": True, "strip_accents": None, "model_max_length": 512,
            **names}
  (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def _define_flags():
  """Flags exist only when this module runs as a program: importing its functions (tests,
  other modules) must not claim flag names such as --input that other CLIs use too."""
  flags.DEFINE_string("input", None, "GLOB of .jsonl[.gz] / text files, or a source spec")
  flags.DEFINE_integer("vocab_size", 30522, "vocabulary size, special tokens included")
  flags.DEFINE_string("out", None, "output directory")
  flags.DEFINE_integer("min_frequency", 2, "minimum count of a merged piece")
  flags.DEFINE_string("data_dir", "", "TFDS data_dir, for --input=tfds:NAME")
  flags.mark_flags_as_required(["input", "out"])


def main(argv):
  del argv
  f = flags.FLAGS
  skips = sources.SkipCounter()
  docs = sources.documents(source_spec(f.input), f.data_dir, skips=skips)
  texts = (doc.decode("utf-8") for doc in docs.as_numpy_iterator())
  tok = train(texts, f.vocab_size, f.min_frequency)
  save(tok, f.out)
  logging.info("skipped input lines: %s", skips.as_dict())
  print(f"wrote {f.out}: vocabulary of {tok.get_vocab_size()} tokens")


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
