"""Chunking and the tf.data pipeline: the batch contract, determinism, sharding, resume, CLI."""

import logging
import os
import resource
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from configs.base import get_config
from retromae_jax.data import tokenizer as tokenizer_lib
from retromae_jax.trainers import settings
from retromae_jax.data.pretrain import batch_contract, chunking, pipeline
from retromae_jax.data import sources
from retromae_jax.objectives.contract import IGNORE
from batches import take  # noqa: E402  (tests/ is on sys.path)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tok():
  return tokenizer_lib.load_tokenizer("default")


@pytest.fixture(scope="module")
def is_cont(tok):
  return tokenizer_lib.continuation_table(tok)


# ---------------------------------------------------------------- Chunking

@pytest.mark.parametrize("seq_len", [16, 64, 128])
def test_chunks_fit_never_mix_documents_and_cover_them(tok, is_cont, seq_len):
  docs = sources.pydoc_texts()[:150]
  kw = dict(max_seq_length=seq_len, min_chunk_tokens=1, is_continuation=is_cont)
  together = list(chunking.chunk_documents(docs, tok, **kw, batch_chars=5000))
  alone = [list(chunking.chunk_documents([d], tok, **kw)) for d in docs]
  # Chunking all documents in one stream gives exactly each document's own chunks, in order:
  # no chunk spans two documents.
  assert len(together) == sum(map(len, alone))
  for a, b in zip(together, (c for chunks in alone for c in chunks)):
    np.testing.assert_array_equal(a, b)
  for doc, chunks in zip(docs, alone):
    assert all(1 <= len(c) <= seq_len - 2 for c in chunks)
    assert all(c.dtype == np.int32 for c in chunks)
    np.testing.assert_array_equal(np.concatenate(chunks),  # the whole document, no lost tail
                                  tok.encode(doc, add_special_tokens=False).ids)


def test_sentences_are_packed_whole_while_they_fit(tok, is_cont):
  sentences = ["The cat sat on the mat.", " It was warm!", " Then it left?", " The end."]
  lens = [len(tok.encode(s, add_special_tokens=False).ids) for s in sentences]
  budget = lens[0] + lens[1]  # the first two fit together, the third starts a new chunk
  chunks = list(chunking.chunk_documents(["".join(sentences)], tok, max_seq_length=budget + 2,
                                         min_chunk_tokens=1, is_continuation=is_cont))
  assert [len(c) for c in chunks] == [lens[0] + lens[1], lens[2] + lens[3]]
  assert list(chunking.sentence_pieces("A b. C d! E")) == ["A b.", " C d!", " E"]


def test_long_sentence_is_cut_at_word_starts(tok, is_cont):
  text = " ".join(["unbelievably transformational tokenization"] * 40)  # no sentence end
  chunks = list(chunking.chunk_documents([text], tok, max_seq_length=12, min_chunk_tokens=1,
                                         is_continuation=is_cont))
  assert len(chunks) > 10 and all(len(c) <= 10 for c in chunks)
  assert not any(is_cont[c[0]] for c in chunks)  # no chunk opens with a '##' piece
  np.testing.assert_array_equal(np.concatenate(chunks),
                                tok.encode(text, add_special_tokens=False).ids)


def test_short_chunks_are_dropped_and_counted(tok, is_cont):
  docs = ["Tiny.", "A sentence that is comfortably long enough to be kept as a chunk."]
  stats = chunking.ChunkStats()
  chunks = list(chunking.chunk_documents(docs, tok, max_seq_length=64, min_chunk_tokens=5,
                                         is_continuation=is_cont, stats=stats))
  assert len(chunks) == 1 and len(chunks[0]) >= 5
  assert (stats.documents, stats.chunks, stats.dropped_chunks, stats.dropped_tokens) == (2, 1, 1, 2)
  assert stats.tokens == len(chunks[0])


def test_ten_megabyte_one_line_document_is_bounded(tok, is_cont):
  words = "alpha beta gamma, delta epsilon zeta eta theta iota kappa lambda mu "
  text = (words * (10_000_000 // len(words) + 1))[:10_000_000]  # one line, no sentence end
  peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  start = time.perf_counter()
  stats = chunking.ChunkStats()
  longest = max(len(c) for c in chunking.chunk_documents(
      [text], tok, max_seq_length=128, min_chunk_tokens=8, is_continuation=is_cont,
      stats=stats))
  assert time.perf_counter() - start < 60
  assert longest <= 126 and stats.tokens > 1_000_000
  grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
  assert grown_mb < 300, grown_mb


# ---------------------------------------------------------------- Pipeline


def _config(corpus, **overrides):
  c = get_config("smoke")
  c.data.source = f"jsonl:{corpus}"
  c.data.max_seq_length = 64
  c.data.shuffle_buffer = 50
  c.batch_size = 8
  for key, value in overrides.items():
    node, *rest = key.split("__")
    if rest:
      setattr(getattr(c, node), rest[0], value)
    else:
      setattr(c, key, value)
  return c


def test_batch_contract(corpus, tok):
  config = _config(corpus, data__pack=False)  # one chunk per row (packed rows: test_packing)
  ids = tokenizer_lib.special_ids(tok)
  shapes = batch_contract.batch_shapes(settings.pretrain_input(config), 8)
  for batch in take(config, tok, 3):
    assert set(batch) == set(shapes)
    for name, (shape, dtype) in shapes.items():
      assert batch[name].shape == shape and batch[name].dtype == dtype, name
    n = batch["attention_mask"].sum(1)
    pos = np.arange(64)
    assert (batch["attention_mask"] == (pos < n[:, None])).all()
    assert (batch["input_ids"][:, 0] == ids.cls).all()
    assert (batch["input_ids"][np.arange(8), n - 1] == ids.sep).all()
    assert (batch["input_ids"][pos >= n[:, None]] == ids.pad).all()
    text = (pos >= 1) & (pos < n[:, None] - 1)
    assert not np.isin(batch["input_ids"][text], [ids.cls, ids.sep, ids.pad]).any()
    assert (batch["decoder_targets"][~text] == IGNORE).all()
    assert shapes["encoder_positions"][0][1] == round(64 * 0.3)
    assert (batch["decoder_choice"][pos >= n[:, None]] == 0).all()


def test_same_seed_same_batches_across_epochs_other_seed_differs(corpus, tok):
  stats = pipeline.PipelineStats()
  a = take(_config(corpus), tok, 30, stats=stats)
  assert stats.epochs >= 2  # the comparison crosses epoch boundaries (reshuffled)
  b = take(_config(corpus), tok, 30)
  for x, y in zip(a, b):
    for name in x:
      np.testing.assert_array_equal(x[name], y[name])
  c = take(_config(corpus, seed=1), tok, 3)
  assert not np.array_equal(a[0]["input_ids"], c[0]["input_ids"])
  assert not np.array_equal(a[0]["decoder_pool"], c[0]["decoder_pool"])
  # Epochs are reshuffled: the first batch of epoch 2 is not the first batch of epoch 1.
  per_epoch = stats.chunks.chunks // stats.epochs
  assert not np.array_equal(a[0]["input_ids"], a[per_epoch // 8]["input_ids"])


def test_start_step_resumes_the_stream(corpus, tok):
  full = take(_config(corpus), tok, 8)
  resumed = take(_config(corpus), tok, 3, start_step=5)
  for x, y in zip(full[5:], resumed):
    for name in x:
      np.testing.assert_array_equal(x[name], y[name])


def test_per_host_batch_and_disjoint_process_shards(corpus, tok):
  config = _config(corpus)
  with pytest.raises(ValueError, match="batch_size 8 is not divisible by the 3 processes"):
    pipeline.pretrain_dataset(settings.pretrain_input(config), tok, process_index=0, process_count=3)
  assert take(config, tok, 1, process_index=1, process_count=2)[0]["input_ids"].shape == (4, 64)
  shards = []
  for index in range(2):
    ds = pipeline.chunk_dataset(settings.pretrain_input(config), tok, process_index=index, process_count=2)
    shards.append({tuple(ids[:n]) for ids, n in ds.as_numpy_iterator()})
  everything = {tuple(ids[:n]) for ids, n in pipeline.chunk_dataset(settings.pretrain_input(config), tok).as_numpy_iterator()}
  assert shards[0] and shards[1] and not shards[0] & shards[1]
  assert shards[0] | shards[1] == everything


def test_fixed_shards_make_the_global_batch_independent_of_the_process_count(corpus, tok):
  """With data.num_shards fixed, process i of 2 hosts exactly rows [4i, 4i+4) of the batch
  that 1 process makes (same chunks, same masks), from the start and after a resume."""
  config = _config(corpus, data__num_shards=2)
  for start in (0, 3):
    one = take(config, tok, 2, start_step=start)
    two = [take(config, tok, 2, start_step=start, process_index=i, process_count=2)
           for i in range(2)]
    for step, batch in enumerate(one):
      for name, value in batch.items():
        np.testing.assert_array_equal(
            value, np.concatenate([two[0][step][name], two[1][step][name]]), err_msg=name)
  with pytest.raises(ValueError, match="config.data.num_shards: 2 shards must be a multiple of "
                                       "the 4 processes"):
    pipeline.pretrain_dataset(settings.pretrain_input(config), tok, process_index=0, process_count=4)


def test_epoch_log_counts_skipped_lines(corpus, tok, caplog):
  caplog.set_level(logging.INFO)
  stats = pipeline.PipelineStats()
  take(_config(corpus), tok, 20, stats=stats)
  skips = stats.skips.as_dict()  # one of each per epoch read (the next one may have begun)
  assert skips["invalid_json"] == skips["missing_text"] in (stats.epochs, stats.epochs + 1)
  assert skips["empty"] == skips["non_utf8"] == 0
  logged = [r.getMessage() for r in caplog.records if "finished epoch 1" in r.getMessage()]
  assert logged and "'invalid_json': 1" in logged[0] and "'missing_text': 1" in logged[0]


def test_a_source_without_usable_chunks_fails_clearly(corpus, tok):
  config = _config(corpus, data__min_chunk_tokens=1000)
  batches = pipeline.pretrain_batches(settings.pretrain_input(config), tok)
  with pytest.raises(tf.errors.OpError, match="no chunk of at least 1000 tokens"):
    next(batches)
  batches.close()


def test_inspect_cli_writes_the_dense_view(tmp_path):
  out = tmp_path / "view.npz"
  proc = subprocess.run(
      [sys.executable, "-m", "retromae_jax.tools.inspect", "--config=configs/base.py:smoke",
       f"--out={out}", "--num_batches=1", "--config.data.shuffle_buffer=100"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  view = dict(np.load(out))
  config = get_config("smoke")
  b, seq = config.batch_size, config.data.max_seq_length
  expected = {"input_ids": (b, seq), "attention_mask": (b, seq), "encoder_input_ids": (b, seq),
              "encoder_labels": (b, seq), "decoder_input_ids": (b, seq),
              "decoder_attention": (b, seq, seq), "decoder_labels": (b, seq),
              # data.pack (the default)
              "segment_ids": (b, seq), "positions": (b, seq), "encoder_attention": (b, seq, seq)}
  assert {k: v.shape for k, v in view.items()} == expected
  assert view["decoder_attention"].dtype == np.uint8
  np.testing.assert_array_equal(view["decoder_input_ids"], view["input_ids"])
  labelled = view["encoder_labels"] != -100
  assert labelled.any()
  np.testing.assert_array_equal(view["encoder_labels"][labelled], view["input_ids"][labelled])
  assert (view["encoder_input_ids"][~labelled] == view["input_ids"][~labelled]).all()
  att, n = view["decoder_attention"], view["attention_mask"].sum(1)
  assert not att[:, np.arange(seq), np.arange(seq)].any()
  first = view["segment_ids"] == 1  # the first document of each row sees its [CLS] at 0
  assert all(att[i, 1:first[i].sum(), 0].all() and not att[i, n[i]:].any() for i in range(b))
