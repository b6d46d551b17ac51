"""Per-document random streams (retromae_jax/objectives/example_random.py): keyed by identity alone,
independent across documents and streams, and uniform where the masks need it."""

import numpy as np
import pytest

from retromae_jax.objectives import example_random
from retromae_jax.objectives.example_random import ExampleRandom


def test_a_documents_values_depend_on_its_identity_not_its_place():
  ids = np.array([[0, 0, 5], [1, 2, 3], [0, 1, 5], [0, 0, 6]])
  random = ExampleRandom(7, ids)
  counts = np.array([10, 3, 7, 0])
  values = random.uint64(2, counts, 12)
  assert (values[np.arange(12) >= counts[:, None]] == 0).all()  # zeros past each count
  # The same identities in another order, with other counts: each row is the same stream.
  again = ExampleRandom(7, ids[::-1]).uint64(2, np.full(4, 12), 12)[::-1]
  for row, count in enumerate(counts):
    np.testing.assert_array_equal(values[row, :count], again[row, :count])
  # Against numpy's own Philox built from the documented key and counter (a second code path).
  for row, (a, b, c) in enumerate(ids):
    reference = np.random.Philox(key=np.array([7, a], np.uint64),
                                 counter=np.array([0, 2, b, c], np.uint64)).random_raw(12)
    np.testing.assert_array_equal(again[row], reference)
  # Every part of the identity, the stream and the seed matter.
  differ = lambda x, y: not np.array_equal(x, y)
  assert differ(values[0, :7], values[2, :7])  # (0, 0, 5) vs (0, 1, 5)
  assert differ(values[0], ExampleRandom(7, ids).uint64(3, counts, 12)[0])
  assert differ(values[0], ExampleRandom(8, ids).uint64(2, counts, 12)[0])


def test_uint32_values_are_each_documents_stream_end_to_end():
  random = ExampleRandom(1, np.array([[0, 0, 0], [0, 0, 1], [3, 0, 0]]))
  values, offsets = random.uint32(4, np.array([5, 0, 12]))
  np.testing.assert_array_equal(offsets, [0, 5, 5])
  assert values.dtype == np.uint32 and len(values) == 17
  stream = random.uint64(4, np.array([8, 8, 8]), 8).view(np.uint32)  # [3, 16]
  np.testing.assert_array_equal(values[:5], stream[0, :5])
  np.testing.assert_array_equal(values[5:], stream[2, :12])
  # More values of a document begin with the same ones: what a longer pool row reads.
  longer, _ = random.uint32(4, np.array([9, 1, 1]))
  np.testing.assert_array_equal(longer[:5], values[:5])


def test_numbers_are_uniform_and_streams_independent():
  random = ExampleRandom(3, np.stack([np.zeros(400), np.zeros(400), np.arange(400)], 1))
  bits = random.uint64(1, np.full(400, 500), 500)  # 200,000 values
  fractions = example_random.low_fraction(bits).ravel()
  assert ((fractions >= 0) & (fractions < 1)).all()
  # Kolmogorov-Smirnov distance to U(0, 1): 1.63 / sqrt(n) is the 1% critical value.
  sorted_f = np.sort(fractions)
  ecdf = np.arange(1, len(sorted_f) + 1) / len(sorted_f)
  assert np.abs(ecdf - sorted_f).max() < 1.63 / np.sqrt(len(sorted_f))
  # below(): every value of [0, 7) equally often (chi-square, 6 degrees of freedom, 0.1%: 22.5).
  counts = np.bincount(example_random.below(bits, 7).ravel(), minlength=7)
  expected = bits.size / 7
  assert counts.size == 7 and ((counts - expected) ** 2 / expected).sum() < 22.5
  # Per-row bounds broadcast: values stay below each row's own bound.
  bounds = np.arange(1, 401)[:, None]
  assert (example_random.below(bits, bounds) < bounds).all()
  # The high bits (below) and the low bits (low_fraction) of one value are uncorrelated, and so
  # are neighbouring documents and two streams of one document.
  high = example_random.below(bits, 2**16).ravel()
  other = ExampleRandom(3, np.stack([np.zeros(400), np.zeros(400), np.arange(400)], 1))
  shifted = bits >> np.uint64(11)
  second_stream = example_random.low_fraction(other.uint64(2, np.full(400, 500), 500)).ravel()
  pairs = [(high, fractions), (shifted[:-1].ravel(), shifted[1:].ravel()),
           (fractions, second_stream)]
  for x, y in pairs:
    assert abs(np.corrcoef(x.astype(float), y.astype(float))[0, 1]) < 0.015  # 4.7 sigma at n=2e5


def test_identities_are_checked_and_numbered():
  with pytest.raises(ValueError, match=r"2 document identities for 3 documents"):
    ExampleRandom(0, np.zeros((2, 3), int)).for_documents(3)
  with pytest.raises(ValueError, match=r"expected ids \[documents, 3\]"):
    ExampleRandom(0, np.zeros((2, 2), int))
  numbered = ExampleRandom.numbered(5, 2, 9).for_documents(3)
  np.testing.assert_array_equal(numbered.ids, [[2, 9, 0], [2, 9, 1], [2, 9, 2]])
