"""Several fine-tuning datasets, one per batch (data/mixture.py): the data.train syntax, no batch
mixing datasets, proportions by weight, resume, and the same choices on every process."""

import json

import numpy as np
import pytest

from retromae_jax.data import mixture
from retromae_jax.data import pairs
from retromae_jax.data import tokenizer as tokenizer_lib

TOKENIZER = tokenizer_lib.load_tokenizer("default")


def test_data_train_syntax():
  got = mixture.parse("jsonl:a/*.jsonl@2, beir:/d/x@0.5;in_batch_negatives=false;"
                      "query_instruction=Find, quickly: ,pydoc")
  assert got == [
      mixture.Dataset("jsonl:a/*.jsonl", 2.0),
      mixture.Dataset("beir:/d/x", 0.5, in_batch_negatives=False,
                      query_instruction="Find, quickly: "),
      mixture.Dataset("pydoc", 1.0)]
  assert mixture.parse("pydoc") == [mixture.Dataset("pydoc")]


@pytest.mark.parametrize("spec, message", [
    ("jsonl:a@x", "config.data.train: 'jsonl:a@x': the weight after '@' must be a number"),
    ("jsonl:a@0", "expected a weight > 0"),
    ("jsonl:a;negatives=2", "option 'negatives=2'; expected NAME=VALUE with NAME one of"),
    ("jsonl:a;in_batch_negatives=no", "in_batch_negatives must be true or false"),
])
def test_bad_specs_fail_naming_the_key(spec, message):
  with pytest.raises(ValueError, match=message):
    mixture.parse(spec)


def _dataset(tmp_path, name, n, process_index=0, process_count=1, **kwargs):
  path = tmp_path / f"{name}.jsonl"
  path.write_text("".join(json.dumps({"query": f"{name} question {i}", "pos": [f"{name} answer {i}"]})
                          + "\n" for i in range(n)))
  examples = pairs.load_examples(f"jsonl:{path}", process_index=process_index,
                                 process_count=process_count)
  return pairs.GroupBatches(examples, TOKENIZER, batch_size=4 // process_count, group_size=1,
                            query_max_len=8, passage_max_len=8, seed=3,
                            process_index=process_index, **kwargs)


def test_every_batch_comes_from_one_dataset_in_proportion_to_the_weights(tmp_path):
  alpha, beta = _dataset(tmp_path, "alpha", 24), _dataset(tmp_path, "beta", 40,
                                                         in_batch_negatives=False)
  mixed = mixture.MixedBatches([alpha, beta], [3.0, 1.0], seed=3)
  alpha_id, beta_id = TOKENIZER.token_to_id("alpha"), TOKENIZER.token_to_id("beta")
  seen = {0: 0, 1: 0}
  for step in range(60):
    ids = mixed(step)["query_input_ids"]
    has_alpha, has_beta = (ids == alpha_id).any(axis=1), (ids == beta_id).any(axis=1)
    assert has_alpha.all() != has_beta.all() and (has_alpha ^ has_beta).all()  # one dataset
    k = 0 if has_alpha.all() else 1
    assert mixed(step)["in_batch_negatives"].tolist() == [k == 0] * 4  # the dataset's switch
    # Its batch is that dataset's own next one: its batches in order, whatever the other does.
    expected = (alpha, beta)[k](seen[k])
    np.testing.assert_array_equal(ids, expected["query_input_ids"])
    seen[k] += 1
  # Proportions: 20,000 steps, 3:1 -> 0.75 within 4 standard errors.
  drawn = np.array([mixed.position(s)[0] for s in range(20_000)])
  assert abs(np.mean(drawn == 0) - 0.75) < 4 * np.sqrt(0.75 * 0.25 / 20_000)


def test_resume_and_process_count_do_not_change_the_choices(tmp_path):
  def make(process_index=0, process_count=1):
    return mixture.MixedBatches([_dataset(tmp_path, "alpha", 24, process_index, process_count),
                                 _dataset(tmp_path, "beta", 40, process_index, process_count)],
                                [1.0, 2.0], seed=3)
  first = make()
  positions = [first.position(s) for s in range(mixture.BLOCK + 50)]
  # A fresh object (a resumed run) asked for a late step first gives the same batch.
  resumed = make()
  for step in (mixture.BLOCK + 49, 7):
    assert resumed.position(step) == positions[step]
    np.testing.assert_array_equal(resumed(step)["query_input_ids"],
                                  first(step)["query_input_ids"])
  # Two processes, each with its share: the same dataset at every step.
  for process_index in range(2):
    share = make(process_index, 2)
    assert [share.position(s)[0] for s in range(300)] == [k for k, _ in positions[:300]]


def test_a_single_source_keeps_the_batches_of_one_dataset(tmp_path):
  alpha = _dataset(tmp_path, "alpha", 24)
  mixed = mixture.MixedBatches([alpha], [1.0], seed=3)
  for step in (0, 5, 13):
    np.testing.assert_array_equal(mixed(step)["query_input_ids"], alpha(step)["query_input_ids"])
