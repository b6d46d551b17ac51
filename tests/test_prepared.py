"""Prepared corpora: the prepare command against the raw pipeline, the index order, resume,
mixtures, errors, and a training run on prepared:DIR."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs.base import get_config
from retromae_jax.data import tokenizer as tokenizer_lib
from retromae_jax.trainers import settings
from retromae_jax.data.pretrain import batch_contract, masking, pipeline, prepare, prepared
from retromae_jax.data import sources
from retromae_jax.objectives.example_random import ExampleRandom
from batches import take  # noqa: E402  (tests/ is on sys.path)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEQ_LEN = 64


@pytest.fixture(scope="module")
def tok():
  return tokenizer_lib.load_tokenizer("default")



def _config(source, **data):
  """One chunk per row unless pack=True (packed prepared rows: the tests at the end)."""
  c = get_config("smoke")
  c.data.source = source
  c.data.max_seq_length = SEQ_LEN
  c.data.pack = False
  c.batch_size = 8
  for key, value in data.items():
    setattr(c.data, key, value)
  return c


@pytest.fixture(scope="module")
def two_shards(corpus, tmp_path_factory):
  """The corpus prepared by the command line with two worker processes."""
  out = str(tmp_path_factory.mktemp("prepared") / "two")
  proc = subprocess.run(
      [sys.executable, "-m", "retromae_jax.tools.prepare", f"--source=jsonl:{corpus}",
       f"--out={out}", "--config=configs/base.py:smoke",
       f"--config.data.max_seq_length={SEQ_LEN}", "--num_workers=2"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads(proc.stdout.strip().splitlines()[-1])["out"] == out
  return out


@pytest.fixture(scope="module")
def one_shard(corpus, tmp_path_factory):
  """The corpus prepared in-process by one worker: its order is the raw pipeline's."""
  out = str(tmp_path_factory.mktemp("prepared") / "one")
  prepare.prepare(f"jsonl:{corpus}", out, settings.pretrain_input(_config("")), num_workers=1)
  return out


def _raw_chunks(config, tok, index, count):
  return [ids[1:n - 1] for ids, n in
          pipeline.chunk_dataset(settings.pretrain_input(config), tok, process_index=index, process_count=count)
          .as_numpy_iterator()]


def _assert_batches_equal(a, b):
  for x, y in zip(a, b, strict=True):
    assert set(x) == set(y)
    for name in x:
      np.testing.assert_array_equal(x[name], y[name], err_msg=name)


# ---------------------------------------------------------------- prepare

def test_prepared_chunks_are_the_raw_pipelines(corpus, two_shards, tok):
  raw_config = _config(f"jsonl:{corpus}")
  data = prepared.PreparedCorpus(two_shards)
  # Worker w wrote what process w of 2 chunks in the raw pipeline, in the same order.
  expected = _raw_chunks(raw_config, tok, 0, 2) + _raw_chunks(raw_config, tok, 1, 2)
  got = data.chunks(np.arange(len(data)))
  assert len(got) == len(expected) == data.meta["stats"]["chunks"]
  for a, b in zip(got, expected):
    np.testing.assert_array_equal(a, b)

  # Each chunk is a contiguous piece of its document's own tokenisation, documents in order.
  texts = [t.decode() for w in range(2) for t in
           sources.documents(f"jsonl:{corpus}", "", w, 2).as_numpy_iterator()]
  documents = data.documents()
  assert len(texts) == 40 and documents[0] == 0 and documents[-1] == 39
  assert (np.diff(documents) >= 0).all()
  for chunk, doc in zip(got, documents):
    whole = " " + " ".join(map(str, tok.encode(texts[doc], add_special_tokens=False).ids)) + " "
    assert " " + " ".join(map(str, chunk)) + " " in whole

  stats = data.meta["stats"]
  assert stats["documents"] == 40
  assert stats["skipped_lines"] == {"empty": 0, "invalid_json": 1, "missing_text": 1,
                                    "non_utf8": 0}
  assert stats["tokens"] == sum(map(len, got))
  raw_stats = pipeline.PipelineStats()
  for w in range(2):
    list(pipeline.chunk_dataset(settings.pretrain_input(raw_config), tok, process_index=w, process_count=2,
                                stats=raw_stats).as_numpy_iterator())
  assert stats["dropped_chunks"] == raw_stats.chunks.dropped_chunks > 0
  assert stats["dropped_tokens"] == raw_stats.chunks.dropped_tokens
  # The tokenizer travels with the chunks and is the one they were made with.
  copied = tokenizer_lib.load_tokenizer(os.path.join(two_shards, prepared.TOKENIZER_DIR))
  assert prepared.tokenizer_fingerprint(copied) == data.meta["tokenizer_fingerprint"]


def _remasked(config, tok, batch, random):
  """`batch`'s tokens masked again by masking.make_batch with the documents' identities."""
  spec = batch_contract.masking_spec(settings.pretrain_input(config), tok)
  return masking.make_batch(batch["input_ids"], batch["attention_mask"].sum(1), spec, random,
                            batch["segment_ids"] if spec.pack else None)


def _assert_same_tokens_and_own_masks(raw, ready, config, tok, start, identities):
  """The two pipelines' batches hold the same tokens; each batch's masks are those of its
  documents' identities: the raw pipeline's (seed, shard 0, step, d), the prepared corpus's
  (seed, corpus, epoch, record key) as `identities(step)` computes them from the layout."""
  seed = config.seed & (2**63 - 1)
  for step, (a, b) in enumerate(zip(raw, ready, strict=True), start):
    for name in ("input_ids", "attention_mask", "segment_ids", "positions"):
      if name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    _assert_batches_equal([a], [_remasked(config, tok, a, ExampleRandom.numbered(seed, 0, step))])
    _assert_batches_equal([b], [_remasked(config, tok, a, ExampleRandom(seed, identities(step)))])
    assert not np.array_equal(a["decoder_pool"], b["decoder_pool"])


def test_unshuffled_batches_hold_the_raw_pipelines_chunks(corpus, one_shard, tok):
  """One shard, no shuffling: the raw pipeline and the prepared corpus give the same chunks in
  the same order, also across the end of an epoch; position p holds chunk p % N of epoch
  p // N, and its masks are drawn from that identity."""
  raw = _config(f"jsonl:{corpus}", shuffle_buffer=1)
  ready = _config(f"prepared:{one_shard}", shuffle_buffer=1)
  num_chunks = len(prepared.PreparedCorpus(one_shard))
  assert num_chunks % 8  # the epoch ends inside a batch
  start = num_chunks // 8 - 1

  def identities(step):
    positions = step * 8 + np.arange(8)
    return np.stack([np.zeros(8, int), positions // num_chunks, positions % num_chunks], axis=1)

  _assert_same_tokens_and_own_masks(take(raw, tok, 3, start_step=start),
                                    take(ready, tok, 3, start_step=start), ready, tok, start,
                                    identities)


# ---------------------------------------------------------------- the index order

def test_every_chunk_once_per_epoch_and_seeded_order():
  stream = prepared.IndexStream([1000], [1.0], seed=3, shuffle=True)
  epochs = [stream.lookup(np.arange(e * 1000, (e + 1) * 1000))[1] for e in range(3)]
  for keys in epochs:
    np.testing.assert_array_equal(np.sort(keys), np.arange(1000))
  assert not np.array_equal(epochs[0], epochs[1])  # each epoch has its own order
  assert not np.array_equal(epochs[0], np.arange(1000))
  other = prepared.IndexStream([1000], [1.0], seed=4, shuffle=True)
  assert not np.array_equal(other.lookup(np.arange(1000))[1], epochs[0])
  # Any position is found directly: the same key as when read in sequence.
  np.testing.assert_array_equal(stream.lookup(np.array([2345, 17]))[1],
                                [epochs[2][345], epochs[0][17]])
  unshuffled = prepared.IndexStream([1000], [1.0], seed=3, shuffle=False)
  np.testing.assert_array_equal(unshuffled.lookup(np.arange(1500, 2500))[1],
                                np.r_[500:1000, 0:500])


def test_mixture_deals_exact_shares_and_runs_each_corpus_through_its_epochs():
  sizes, weights = [3000, 500], [0.7, 0.3]
  stream = prepared.IndexStream(sizes, weights, seed=0, shuffle=True)
  positions = np.arange(2 * prepared.MIX_BLOCK)
  corpus, keys, _ = stream.lookup(positions)
  for block in range(2):
    owners = corpus[block * prepared.MIX_BLOCK:(block + 1) * prepared.MIX_BLOCK]
    share = np.count_nonzero(owners == 1)
    assert abs(share - 0.3 * prepared.MIX_BLOCK) <= 1
  first = corpus[:prepared.MIX_BLOCK]
  assert not (first[:1000] == first[0]).all()  # interleaved, not in runs
  for c, size in enumerate(sizes):
    mine = keys[corpus == c]
    for e in range(len(mine) // size):  # every full epoch of corpus c is a permutation
      np.testing.assert_array_equal(np.sort(mine[e * size:(e + 1) * size]), np.arange(size))
  with pytest.raises(ValueError, match="give some corpus no example"):
    prepared.IndexStream([10, 10], [1.0, 1e-9], seed=0, shuffle=True)


def test_global_batch_independent_of_processes_and_shards(two_shards, tok):
  config = _config(f"prepared:{two_shards}", num_shards=2)
  for start in (0, 11):
    one = take(config, tok, 2, start_step=start)
    two = [take(config, tok, 2, start_step=start, process_index=i, process_count=2)
           for i in range(2)]
    for step, batch in enumerate(one):
      for name, value in batch.items():
        np.testing.assert_array_equal(
            value, np.concatenate([two[0][step][name], two[1][step][name]]), err_msg=name)
  # Nor does the whole batch, masks included, depend on the number of shards: a chunk's masks
  # are drawn from (seed, corpus, epoch, record key).
  _assert_batches_equal(take(_config(f"prepared:{two_shards}", num_shards=1), tok, 2),
                        take(config, tok, 2))


def test_a_chunks_masks_depend_on_its_epoch_not_its_batch(two_shards, tok):
  """Batch size 8 at step s is batch size 4 at steps 2s and 2s + 1, masks included; the same
  chunk in the next epoch is masked anew."""
  eight = take(_config(f"prepared:{two_shards}"), tok, 2, start_step=3)
  small = _config(f"prepared:{two_shards}")
  small.batch_size = 4
  four = take(small, tok, 4, start_step=6)
  for i, batch in enumerate(eight):
    for name, value in batch.items():
      np.testing.assert_array_equal(
          value, np.concatenate([four[2 * i][name], four[2 * i + 1][name]]), err_msg=name)
  unshuffled = _config(f"prepared:{two_shards}", shuffle_buffer=1)
  num_chunks = len(prepared.PreparedCorpus(two_shards))
  first = take(unshuffled, tok, 1)[0]  # chunks 0-7 of epoch 0
  step, row = divmod(num_chunks, 8)  # chunk 0 of epoch 1 is at position num_chunks
  later = take(unshuffled, tok, 2, start_step=step)
  rows = {name: np.concatenate([b[name] for b in later])[row:row + 8] for name in first}
  np.testing.assert_array_equal(rows["input_ids"], first["input_ids"])
  assert not np.array_equal(rows["encoder_positions"], first["encoder_positions"])
  assert not np.array_equal(rows["decoder_pool"], first["decoder_pool"])


def test_resume_is_bit_exact_and_epochs_reshuffle(two_shards, tok):
  config = _config(f"prepared:{two_shards}")
  num_chunks = len(prepared.PreparedCorpus(two_shards))
  steps_per_epoch = num_chunks // 8
  full = take(config, tok, steps_per_epoch + 2)
  _assert_batches_equal(full[steps_per_epoch - 1:],
                        take(config, tok, 3, start_step=steps_per_epoch - 1))
  seen = np.concatenate([b["input_ids"] for b in full[:steps_per_epoch]])
  assert len({tuple(r) for r in seen}) == len(seen)  # no chunk twice in an epoch
  assert not np.array_equal(full[0]["input_ids"], full[steps_per_epoch]["input_ids"])
  other = take(_config(f"prepared:{two_shards}"), tok, 1)
  _assert_batches_equal(full[:1], other)
  reseeded = _config(f"prepared:{two_shards}")
  reseeded.seed = 1
  assert not np.array_equal(take(reseeded, tok, 1)[0]["input_ids"], full[0]["input_ids"])


def test_weighted_mixture_of_two_prepared_corpora(one_shard, two_shards, tok):
  config = _config(f"prepared:{one_shard}@3,prepared:{two_shards}@1")
  batches = take(config, tok, 2)
  data = prepared.PreparedData(settings.pretrain_input(config), tok)
  np.testing.assert_allclose(data.stream.counts / prepared.MIX_BLOCK, [0.75, 0.25], atol=1e-4)
  corpus, keys, _ = data.stream.lookup(np.arange(16))
  assert set(corpus) == {0, 1}
  rows = np.concatenate([b["input_ids"] for b in batches])
  for row, c, key in zip(rows, corpus, keys):
    chunk = data.corpora[c].chunks([key])[0]
    np.testing.assert_array_equal(row[1:len(chunk) + 1], chunk)


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("source, message", [
    ("prepared:", "bad part"),
    ("prepared:a@x", "bad part"),
    ("prepared:a@0", "bad part"),
    ("prepared:a,jsonl:b", "is not a prepared corpus"),
])
def test_bad_source_strings(source, message):
  with pytest.raises(ValueError, match=message):
    prepared.parse_source(source)


def test_mismatched_settings_fail_with_the_fix(two_shards, tmp_path, tok):
  with pytest.raises(ValueError, match="data.max_seq_length=64.*set --config.data.max_seq_length"):
    prepared.PreparedData(settings.pretrain_input(_config(f"prepared:{two_shards}", max_seq_length=128)), tok)
  other = tokenizer_lib.load_tokenizer("default")
  other.add_tokens(["retromaeword"])
  with pytest.raises(ValueError, match="another tokenizer.*--config.tokenizer=.*tokenizer"):
    prepared.PreparedData(settings.pretrain_input(_config(f"prepared:{two_shards}")), other)
  with pytest.raises(ValueError, match="no prepared.json there"):
    prepared.PreparedCorpus(str(tmp_path))
  with pytest.raises(ValueError, match="already holds a prepared corpus"):
    prepare.prepare("pydoc", two_shards, settings.pretrain_input(_config("")))
  with pytest.raises(ValueError, match="holds chunks, not documents"):
    sources.documents(f"prepared:{two_shards}")
  tiny = tmp_path / "tiny.jsonl"
  tiny.write_text(json.dumps({"text": "Too short."}) + "\n")
  with pytest.raises(ValueError, match="no chunk of at least 8 tokens in 1 documents"):
    prepare.prepare(f"jsonl:{tiny}", str(tmp_path / "out"), settings.pretrain_input(_config("")), num_workers=1)


# ---------------------------------------------------------------- packed rows (data.pack)

def _segments(batches):
  """The token ids of every segment ([CLS] chunk [SEP]) of the batches' rows, in order."""
  out = []
  for batch in batches:
    for ids, segments in zip(batch["input_ids"], batch["segment_ids"]):
      out += [tuple(ids[segments == k]) for k in range(1, segments.max() + 1)]
  return out


def test_packed_unshuffled_batches_hold_the_raw_pipelines_rows(corpus, one_shard, tok):
  """One shard, no shuffling: the prepared rows are the raw pipeline's packed rows (the plan
  written at prepare time is its packing of the same chunk stream), also across an epoch's end;
  each chunk's masks come from (corpus, epoch of its row, record key)."""
  raw = _config(f"jsonl:{corpus}", shuffle_buffer=1, pack=True)
  ready = _config(f"prepared:{one_shard}", shuffle_buffer=1, pack=True)
  num_rows = prepared.PreparedCorpus(one_shard).num_rows
  assert num_rows < len(prepared.PreparedCorpus(one_shard)) and num_rows % 8
  start = num_rows // 8 - 1
  row_of = np.load(os.path.join(one_shard, prepared.shard_names(0, 1)[2]))  # the plan

  def identities(step):
    out = []
    for position in step * 8 + np.arange(8):
      epoch, row = divmod(position, num_rows)
      out += [(0, epoch, key) for key in np.flatnonzero(row_of == row)]  # in corpus order
    return np.array(out)

  batches = take(ready, tok, 3, start_step=start)
  _assert_same_tokens_and_own_masks(take(raw, tok, 3, start_step=start), batches, ready, tok,
                                    start, identities)
  assert max(b["segment_ids"].max() for b in batches) >= 2


def test_packed_rows_hold_whole_chunks_each_once_per_epoch(two_shards, tok):
  config = _config(f"prepared:{two_shards}", pack=True)
  corpus = prepared.PreparedCorpus(two_shards)
  steps = corpus.num_rows // 8 + 1
  batches = take(config, tok, steps)
  rows = np.concatenate([b["input_ids"] for b in batches])[:corpus.num_rows]  # one epoch
  segment_ids = np.concatenate([b["segment_ids"] for b in batches])[:corpus.num_rows]
  got = _segments([{"input_ids": rows, "segment_ids": segment_ids}])
  ids = tokenizer_lib.special_ids(tok)
  expected = [(ids.cls, *c, ids.sep) for c in corpus.chunks(np.arange(len(corpus)))]
  assert sorted(got) == sorted(expected)  # every chunk whole, once
  assert (rows[segment_ids == 0] == ids.pad).all()
  assert np.mean(segment_ids > 0) > 0.8  # rows are packed
  # The next epoch has its own order of rows.
  assert not np.array_equal(batches[0]["input_ids"],
                            take(config, tok, 1, start_step=steps)[0]["input_ids"])


def test_packed_resume_equals_the_uninterrupted_run(two_shards, tok):
  config = _config(f"prepared:{two_shards}", pack=True)
  steps_per_epoch = prepared.PreparedCorpus(two_shards).num_rows // 8
  full = take(config, tok, steps_per_epoch + 2)
  _assert_batches_equal(full[steps_per_epoch - 1:],
                        take(config, tok, 3, start_step=steps_per_epoch - 1))
  _assert_batches_equal(full[5:6], take(config, tok, 1, start_step=5))


def test_packed_rows_need_the_plans_mask_ratio(two_shards, tok):
  with pytest.raises(ValueError, match="rows packed for data.encoder_mask_ratio=0.3.*prepare "
                                       "again, or set --config.data.pack=False"):
    prepared.PreparedData(settings.pretrain_input(_config(f"prepared:{two_shards}", pack=True, encoder_mask_ratio=0.15)),
                          tok)
  prepared.PreparedData(settings.pretrain_input(_config(f"prepared:{two_shards}", encoder_mask_ratio=0.15)), tok)


# ---------------------------------------------------------------- training

def test_training_run_on_a_prepared_corpus(two_shards, tmp_path):
  workdir = str(tmp_path / "run")
  proc = subprocess.run(
      [sys.executable, "-m", "retromae_jax.main", "--config=configs/base.py:smoke",
       f"--workdir={workdir}", f"--config.data.source=prepared:{two_shards}",
       f"--config.data.max_seq_length={SEQ_LEN}", "--config.batch_size=4",
       "--config.total_steps=3", "--config.log_every=1", "--config.checkpoint_every=3"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  assert [r["step"] for r in rows] == [1, 2, 3]
  assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in rows)
