"""The first batches of the pretraining pipeline, for tests that compare pipelines."""

import contextlib
import itertools

from retromae_jax.data.pretrain import pipeline
from retromae_jax.trainers import settings


def take(config, tokenizer, n: int, **kwargs) -> list[dict]:
  """The first `n` batches of pipeline.pretrain_batches; the generator (and its tf.data
  iterator) is closed after."""
  with contextlib.closing(pipeline.pretrain_batches(settings.pretrain_input(config), tokenizer, **kwargs)) as batches:
    return list(itertools.islice(batches, n))
