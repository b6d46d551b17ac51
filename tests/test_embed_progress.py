"""embed() reports its progress over a multi-batch corpus: texts done / total, rate, ETA, and a
final line. No timing is asserted: the interval is set to 0 (a line per batch) or to a day (the
final line alone), so the lines counted do not depend on the machine's speed."""

import logging

import jax
import jax.numpy as jnp
import flax.linen as nn
import pytest

from retromae_jax.data import tokenizer as tokenizer_lib
from retromae_jax.evaluators import embed as embed_lib
from retromae_jax.models.bert import ModelConfig
from retromae_jax.objectives.enhanced.model import RetroMAE

TEXTS = [f"document number {i} says " + "word " * (i % 7) for i in range(10)]
BATCH = 4  # 10 texts: batches of 4, 4 and 2


@pytest.fixture(scope="module")
def encoder():
  tok = tokenizer_lib.load_tokenizer("default")
  cfg = ModelConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_layers=1, num_heads=2,
                    intermediate_size=64, max_position_embeddings=64)
  dummy = jnp.zeros((1, 8), jnp.int32)
  params = nn.unbox(RetroMAE(cfg).init(jax.random.key(0), dummy, dummy,
                                       method="encode"))["params"]
  return cfg, params, tok


def _progress_lines(caplog, encoder, every_s, monkeypatch):
  monkeypatch.setattr(embed_lib, "PROGRESS_EVERY_S", every_s)
  cfg, params, tok = encoder
  with caplog.at_level(logging.INFO):
    out = embed_lib.embed(cfg, params, tok, TEXTS, batch_size=BATCH, max_len=32,
                          label="corpus")
  assert out.shape == (len(TEXTS), cfg.hidden_size)
  return [r.getMessage() for r in caplog.records if r.getMessage().startswith("corpus: ")]


def test_a_line_per_batch_then_done(caplog, encoder, monkeypatch):
  lines = _progress_lines(caplog, encoder, 0.0, monkeypatch)
  assert [line.split()[1] for line in lines] == ["4/10", "8/10", "10/10"]
  assert all("texts/s" in line for line in lines)
  assert all("ETA" in line for line in lines[:-1])
  assert "done in" in lines[-1] and "(100%)" in lines[-1]


def test_only_the_final_line_within_the_interval(caplog, encoder, monkeypatch):
  lines = _progress_lines(caplog, encoder, 86_400.0, monkeypatch)
  assert len(lines) == 1 and lines[0].startswith("corpus: 10/10 texts (100%)")
