"""Issue 21: label-free adaptation. The anti-forgetting term against PyTorch / NumPy
computations; label-free pairs (crops, inverse cloze, heading/body) checked against the document
they come from, and a pure function of (seed, document, view) for exact resume."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from retromae_jax.data import pairs
from retromae_jax.data import selfsup_pairs
from retromae_jax.data import tokenizer as tokenizer_lib
from retromae_jax.models import anchor_loss

DOC = ("The cat sat on the mat near the door. It watched the birds outside for an hour. "
       "Then it slept in the warm sun all afternoon long.\n\n"
       "Dogs are different animals entirely. They like to run in the park with their owners. "
       "A dog will fetch a ball many times without getting tired at all.")


def test_vector_loss_is_one_minus_cosine():
  rng = np.random.default_rng(0)
  s, t = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
  w = np.array([1, 1, 0, 1, 1], np.float32)
  expected = (1 - torch.nn.functional.cosine_similarity(torch.tensor(s), torch.tensor(t)))
  expected = (expected.numpy() * w).sum() / w.sum()
  got = anchor_loss.vector_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(w))
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  assert float(anchor_loss.vector_loss(jnp.asarray(s), jnp.asarray(s), jnp.asarray(w))) < 1e-6
  # A zero row weighted 0 (a packed row's padding) leaves the gradient finite.
  s[2] = 0.0
  grad = jax.grad(anchor_loss.vector_loss)(jnp.asarray(s), jnp.asarray(t), jnp.asarray(w))
  assert np.isfinite(np.asarray(grad)).all()


@pytest.mark.parametrize("same_set", [False, True])
def test_similarity_loss_is_torch_kl_of_the_in_batch_distributions(same_set):
  rng = np.random.default_rng(1)
  n, m = 4, (4 if same_set else 6)
  sa, ta = rng.normal(size=(n, 8)), rng.normal(size=(n, 8))
  sb, tb = (sa, ta) if same_set else (rng.normal(size=(m, 8)), rng.normal(size=(m, 8)))
  valid_b = np.ones(m, bool)
  valid_b[-1] = False
  valid_a = np.array([True, True, False, True])
  temp = 0.1
  total, rows = 0.0, 0
  for i in range(n):
    if not valid_a[i]:
      continue
    cols = [j for j in range(m) if valid_b[j] and not (same_set and j == i)]
    cos = lambda a, b: torch.nn.functional.cosine_similarity(
        torch.tensor(a[i])[None], torch.tensor(b[cols]))
    log_s = torch.log_softmax(cos(sa, sb) / temp, -1)
    log_t = torch.log_softmax(cos(ta, tb) / temp, -1)
    total += torch.nn.functional.kl_div(log_s, log_t, log_target=True, reduction="sum").item()
    rows += 1
  got = anchor_loss.similarity_loss(*map(jnp.asarray, (sa, sb, ta, tb, valid_a, valid_b)), temp,
                                    same_set)
  np.testing.assert_allclose(got, total / rows, rtol=1e-4)


def _words_in(needle: str, hay: str) -> bool:
  """needle's words are a contiguous run of hay's words."""
  n, h = needle.split(), hay.split()
  return any(h[i:i + len(n)] == n for i in range(len(h) - len(n) + 1))


def test_crops_are_two_spans_of_one_window():
  opts = selfsup_pairs.Options(kinds="crops", window_words=20, crop_min=0.2, crop_max=0.5)
  words = DOC.split()
  for view in range(20):
    q, p = selfsup_pairs.make_pair(DOC, opts, seed=0, view=view)
    for crop in (q, p):
      assert _words_in(crop, DOC) and 4 <= len(crop.split()) <= 10
    # Both inside one 20-word window: the span from the first to the last word is <= 20.
    spans = []
    for crop in (q, p):
      n = crop.split()
      spans += [i for i in range(len(words)) if words[i:i + len(n)] == n]
    assert min(max(spans) - min(spans) + 10, 30) <= 30


def test_inverse_cloze_is_a_sentence_against_its_neighbours_without_it():
  opts = selfsup_pairs.Options(kinds="ict", window_words=40)
  sentences = selfsup_pairs.sentences(DOC)
  assert len(sentences) == 6
  seen = set()
  for view in range(30):
    q, p = selfsup_pairs.make_pair(DOC, opts, seed=3, view=view)
    i = sentences.index(q)
    seen.add(i)
    context = [s for s in sentences if s in p]
    assert q not in context and context  # the sentence itself is removed
    idx = sorted([i] + [sentences.index(s) for s in context])
    assert idx == list(range(idx[0], idx[-1] + 1))  # contiguous, with i's place left out
    assert len(p.split()) <= 40
  assert len(seen) >= 4


def test_heading_pairs_need_structure():
  md = "# Install\nRun pip install retromae and wait until the download and the build finish.\n"
  opts = selfsup_pairs.Options(kinds="heading")
  assert selfsup_pairs.make_pair(md, opts, 0, 0) == (
      "Install", "Run pip install retromae and wait until the download and the build finish.")
  plain = "no structure here at all, one plain sentence."
  assert selfsup_pairs.make_pair(plain, opts, 0, 0) is None


def test_selfsup_source_is_a_pure_function_of_seed_and_step(tmp_path):
  corpus = tmp_path / "docs.jsonl"
  texts = [DOC.replace("cat", f"cat{i}") for i in range(12)]
  corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
  options = dict(kinds="crops,ict", views=2)
  whole = pairs.load_examples(f"selfsup:jsonl:{corpus}", selfsup=dict(options, seed=5))
  assert len(whole) == 24 and sorted(e.uid for e in whole) == list(range(24))
  # Two processes split the uids and make the same pairs.
  shares = [pairs.load_examples(f"selfsup:jsonl:{corpus}", process_index=p, process_count=2,
                                selfsup=dict(options, seed=5)) for p in range(2)]
  assert sorted(shares[0] + shares[1], key=lambda e: e.uid) == whole
  assert pairs.load_examples(f"selfsup:jsonl:{corpus}", selfsup=dict(options, seed=6)) != whole
  tok = tokenizer_lib.load_tokenizer("default")
  make = lambda examples: pairs.GroupBatches(examples, tok, batch_size=4, group_size=1,
                                             query_max_len=16, passage_max_len=32, seed=5)
  fresh = pairs.load_examples(f"selfsup:jsonl:{corpus}", selfsup=dict(options, seed=5))
  for step in (0, 3, 7, 13):  # a resumed run (new process) reads the same batch
    a, b = make(whole)(step), make(fresh)(step)
    for name in a:
      np.testing.assert_array_equal(a[name], b[name])
  with pytest.raises(ValueError, match="selfsup.kinds"):
    pairs.load_examples(f"selfsup:jsonl:{corpus}", selfsup=dict(kinds="crops,nope"))


def test_tsdae_preset_is_registry_parts_and_validates():
  from configs import tsdae
  from retromae_jax.trainers import settings
  from retromae_jax.trainers import validation
  config = tsdae.get_config("smoke")
  config.model.sentence_vector = "mean"
  validation.validate(config, 1, 1)
  objective = settings.objective(config)
  assert (objective.encoder_masking, objective.decoder_kind) == ("drop", "tsdae")
  assert config.data.encoder_mask_ratio == 0.6 and config.data.pack


def test_anchor_checks_name_the_key():
  from configs import base
  from retromae_jax.trainers import validation
  config = base.get_config("smoke")
  config.anchor.weight = 1.0
  with pytest.raises(ValueError, match="config.anchor.weight: the term keeps the encoder near"):
    validation.validate(config, 1, 1)
  config.init.hf_dir = "somewhere"
  config.anchor.kind = "similarities"
  with pytest.raises(ValueError, match="config.anchor.kind: 'similarities' compares"):
    validation.validate(config, 1, 1, shape_known=True)


def test_holdout_kinds_hold_out_the_same_documents_by_hash():
  import hashlib
  texts = [f"# Topic {i}\nThe body of page {i} says something useful about topic number {i}. "
           f"It has a second sentence with enough words in it." for i in range(60)]
  texts += [f"A page {i} without any headings at all in it. It still has two sentences of some "
            f"length each, and this one is the longer of the two." for i in range(60)]
  # Held out iff the blake2b hash of the text, as a fraction of 2^64, is below the share.
  by_hand = [t for t in texts if int.from_bytes(
      hashlib.blake2b(t.encode(), digest_size=8).digest(), "little") / 2**64 < 0.3]
  ict = selfsup_pairs.holdout_split(texts, 0.3, 0, 100, "ict")
  heading = selfsup_pairs.holdout_split(texts, 0.3, 0, 100, "heading")
  assert ict[0] == heading[0] == [t for t in texts if t not in by_hand]  # same train documents
  assert len(ict[2]) == len(by_hand)  # every held-out page gives an inverse-cloze pair
  # Heading pseudo-queries: only the pages with a heading; the query is the heading, the
  # relevant passage the body under it.
  with_heading = [t for t in by_hand if t.startswith("#")]
  assert len(heading[2]) == len(with_heading) > 0
  for qid, query in heading[2].items():
    (doc,) = heading[3][qid]
    assert query.startswith("Topic ") and heading[1][doc].startswith("The body of page")
  with pytest.raises(ValueError, match="kinds"):
    selfsup_pairs.holdout_split(texts, 0.3, 0, 100, "title")
