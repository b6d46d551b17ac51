"""The first batches of the pretraining pipeline, for tests that compare pipelines."""

import contextlib
import itertools

from retromae_jax.data.pretrain import pipeline


def take(config, tokenizer, n: int, **kwargs) -> list[dict]:
  """The first `n` batches of pipeline.pretrain_batches; the generator (and its tf.data
  iterator) is closed after."""
  with contextlib.closing(pipeline.pretrain_batches(config, tokenizer, **kwargs)) as batches:
    return list(itertools.islice(batches, n))
