"""Fine-tuning data: FlagEmbedding jsonl and BEIR sources, group sampling, the batch contract,
process shares and the step -> batch function that makes resume exact."""

import json

import numpy as np
import pytest

from retromae_jax.data import tokenizer as tokenizer_lib
from retromae_jax.data import pairs
from retromae_jax.data.evalsets import beir

TOKENIZER = tokenizer_lib.load_tokenizer("default")


def _jsonl(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
  return f"jsonl:{path}"


def _records(n, negatives=3):
  return [{"query": f"what does helper number {i} compute",
           "pos": [f"helper {i} computes the value {i}", f"helper {i} returns {i}"],
           "neg": [f"helper {i} wrong answer {j}" for j in range(negatives)]} for i in range(n)]


def test_flagembedding_jsonl_with_empty_missing_and_string_fields(tmp_path):
  records = [{"query": "a", "pos": ["p"], "neg": []}, {"query": "b", "pos": "p2"},
             {"query": "c", "pos": ["p3"], "neg": "n3"}, {"query": "d", "pos": []}]
  examples = pairs.load_examples(_jsonl(tmp_path / "x.jsonl", records))
  assert [(e.uid, e.query, e.pos, e.neg) for e in examples] == [
      (0, "a", ("p",), ()), (1, "b", ("p2",), ()), (2, "c", ("p3",), ("n3",))]  # "d": no positive


@pytest.mark.parametrize("line, message", [
    ("{not json", "x.jsonl:2: not valid JSON"),
    ('{"pos": ["p"]}', "x.jsonl:2: expected an object with a string 'query' field"),
    ('{"query": "q", "pos": [1, 2]}', "x.jsonl:2: field 'pos' must be a list of strings"),
])
def test_malformed_lines_fail_with_file_and_line(tmp_path, line, message):
  path = tmp_path / "x.jsonl"
  path.write_text(json.dumps({"query": "ok", "pos": ["p"]}) + "\n" + line + "\n")
  with pytest.raises(ValueError, match=message):
    pairs.load_examples(f"jsonl:{path}")


def test_unknown_source_names_the_key():
  with pytest.raises(ValueError, match="config.data.train 'csv:x': unknown"):
    pairs.load_examples("csv:x")


def test_groups_positive_first_distinct_negatives_and_invalid_padding():
  example = pairs.Example(3, "q", pos=("p1", "p2"), neg=("n1", "n2", "n3"))
  for epoch in range(5):
    texts, valid = pairs.sample_group(example, 3, seed=0, epoch=epoch)
    assert texts[0] in example.pos and valid.tolist() == [True, True, True]
    assert len(set(texts[1:])) == 2 and set(texts[1:]) <= set(example.neg)
    assert pairs.sample_group(example, 3, seed=0, epoch=epoch)[0] == texts  # deterministic
  # Epochs draw different groups.
  drawn = {tuple(pairs.sample_group(example, 3, seed=0, epoch=e)[0]) for e in range(20)}
  assert len(drawn) > 5
  # Fewer negatives than slots: each one once, the rest invalid; none: only the positive.
  texts, valid = pairs.sample_group(example, 6, seed=0, epoch=0)
  assert sorted(texts[1:4]) == ["n1", "n2", "n3"] and texts[4:] == ["", ""]
  assert valid.tolist() == [True] * 4 + [False] * 2
  texts, valid = pairs.sample_group(pairs.Example(0, "q", ("p",)), 3, seed=0, epoch=0)
  assert texts == ["p", "", ""] and valid.tolist() == [True, False, False]


def test_batch_contract_instructions_and_lengths(tmp_path):
  examples = pairs.load_examples(_jsonl(tmp_path / "x.jsonl", _records(10, negatives=1)))
  batches = pairs.GroupBatches(examples, TOKENIZER, batch_size=4, group_size=3, query_max_len=12,
                               passage_max_len=10, seed=0, query_instruction="query: ",
                               passage_instruction="passage: ")
  batch = batches(0)
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
      k: (shape, np.dtype(dtype)) for k, (shape, dtype) in batches.shapes.items()}
  assert batch["passage_input_ids"].shape == (4, 3, 10)
  assert batch["passage_valid"].tolist() == [[True, True, False]] * 4
  rows = batches.rows(0)
  ids = tokenizer_lib.special_ids(TOKENIZER)
  def expected(text, length):  # [CLS] tokens [SEP], cut to `length`, padded
    tokens = TOKENIZER.encode(text).ids
    tokens = tokens[:length - 1] + [ids.sep] if len(tokens) > length else tokens
    return tokens + [ids.pad] * (length - len(tokens))

  for i, example in enumerate(rows):
    assert batch["query_input_ids"][i].tolist() == expected("query: " + example.query, 12)
    positive = batch["passage_input_ids"][i, 0].tolist()
    assert positive in [expected("passage: " + p, 10) for p in example.pos]
    assert batch["passage_input_ids"][i, 1].tolist() == expected("passage: " + example.neg[0], 10)
    assert batch["passage_input_ids"][i, 2, :3].tolist() == [ids.cls, ids.sep, ids.pad]
  assert (batch["query_input_ids"][batch["query_attention_mask"] == 0] == ids.pad).all()


def test_batches_are_a_function_of_the_step_and_epochs_cover_the_data(tmp_path):
  examples = pairs.load_examples(_jsonl(tmp_path / "x.jsonl", _records(10)))
  make = lambda: pairs.GroupBatches(examples, TOKENIZER, batch_size=3, group_size=2,
                                    query_max_len=8, passage_max_len=8, seed=5)
  batches = make()
  assert batches.steps_per_epoch == 3  # 10 // 3: the last example of each epoch waits
  epoch0 = [e.uid for step in range(3) for e in batches.rows(step)]
  epoch1 = [e.uid for step in range(3, 6) for e in batches.rows(step)]
  assert len(set(epoch0)) == 9 and epoch0 != epoch1
  # The iterator from any start step gives what batch(step) gives: resume is exact.
  iterator = pairs.group_batches(make(), start_step=4)
  for step in (4, 5, 6):
    got, expected = next(iterator), batches(step)
    assert all(np.array_equal(got[k], expected[k]) for k in expected)
  iterator.close()


def test_process_shares_are_disjoint_and_cover_the_source(tmp_path):
  source = _jsonl(tmp_path / "x.jsonl", _records(11))
  shares = [pairs.load_examples(source, process_index=p, process_count=3) for p in range(3)]
  uids = [e.uid for share in shares for e in share]
  assert sorted(uids) == list(range(11))
  # Processes agree on the epoch length (the smallest share) and read different rows.
  rows = [pairs.GroupBatches(share, TOKENIZER, batch_size=2, group_size=1, query_max_len=8,
                             passage_max_len=8, seed=0, process_index=p,
                             epoch_size=min(map(len, shares))).rows(0)
          for p, share in enumerate(shares)]
  assert len({e.uid for r in rows for e in r}) == 6


def test_beir_source_with_judged_and_mined_negatives(tmp_path):
  corpus = {f"d{i}": (f"title {i}", f"document text {i}") for i in range(6)}
  queries = {"q1": "first question", "q2": "second question", "q3": "unjudged question"}
  qrels = {"train": {"q1": {"d0": 1, "d1": 0}, "q2": {"d2": 2, "d3": 1}}}
  beir.write(str(tmp_path / "set"), corpus, queries, qrels)
  mined = tmp_path / "mined.jsonl"  # `python -m retromae_jax.tools.mine` output: texts
  _jsonl(mined, [{"query": "first question", "pos": ["title 0 document text 0"],
                  "neg": ["title 4 document text 4", "title 1 document text 1"]}])
  examples = pairs.load_examples(f"beir:{tmp_path / 'set'}", "train", str(mined))
  assert [(e.query, e.pos, e.neg) for e in examples] == [
      ("first question", ("title 0 document text 0",),
       ("title 1 document text 1", "title 4 document text 4")),
      ("second question", ("title 2 document text 2", "title 3 document text 3"), ())]
  other = tmp_path / "other.jsonl"
  _jsonl(other, [{"query": "a question of another set", "pos": ["x"], "neg": ["y"]}])
  with pytest.raises(ValueError, match="no query of .* is in"):
    pairs.load_examples(f"beir:{tmp_path / 'set'}", "train", str(other))


def test_teacher_scores_follow_the_sampled_passages(tmp_path):
  records = [{"query": f"q{i}", "pos": [f"p{i}a", " ", f"p{i}b"], "neg": [f"n{i}{j}" for j in range(4)],
              "pos_scores": [10 + i, -99, 20 + i], "neg_scores": [j - 5 for j in range(4)]}
             for i in range(6)]
  examples = pairs.load_examples(_jsonl(tmp_path / "s.jsonl", records), require_scores=True)
  # The blank positive is dropped with its score.
  assert examples[0].pos_scores == (10.0, 20.0) and examples[0].neg_scores == (-5, -4, -3, -2)
  score_of = {}
  for r in records:
    score_of.update(zip(r["pos"] + r["neg"], r["pos_scores"] + r["neg_scores"]))
  batches = pairs.GroupBatches(examples, TOKENIZER, batch_size=3, group_size=3, query_max_len=8,
                               passage_max_len=8, seed=1)
  for step in range(4):
    batch, epoch = batches(step), step // batches.steps_per_epoch
    for row, example in enumerate(batches.rows(step)):
      texts, _ = pairs.sample_group(example, 3, seed=1, epoch=epoch)
      assert batch["teacher_scores"][row].tolist() == [score_of[t] for t in texts]
  assert batch["in_batch_negatives"].tolist() == [True] * 3


@pytest.mark.parametrize("record, message", [
    ({"query": "q", "pos": ["p"], "neg": ["n1", "n2"], "pos_scores": [1.0], "neg_scores": [0.5]},
     r"s.jsonl:2: field 'neg_scores' must be a list of 2 numbers, one per text of 'neg'"),
    ({"query": "q", "pos": ["p"], "pos_scores": ["high"]},
     r"s.jsonl:2: field 'pos_scores' must be a list of 1 numbers"),
    ({"query": "q", "pos": ["p"], "neg": ["n"], "pos_scores": [1.0]},
     r"s.jsonl:2: no teacher scores \('pos_scores' / 'neg_scores'\)"),
    ({"query": "q", "pos": ["p"]}, r"s.jsonl:2: no teacher scores"),
])
def test_missing_or_misaligned_scores_fail_with_file_and_line(tmp_path, record, message):
  good = {"query": "ok", "pos": ["p"], "pos_scores": [1.0]}
  source = _jsonl(tmp_path / "s.jsonl", [good, record])
  with pytest.raises(ValueError, match=message):
    pairs.load_examples(source, require_scores=True)


def test_distillation_needs_a_source_with_scores(tmp_path):
  with pytest.raises(ValueError, match="config.loss.kd_weight: 'pydoc' carries no teacher scores"):
    pairs.load_examples("pydoc", require_scores=True)
