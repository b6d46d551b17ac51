"""tf.data pipelines whose batches are made by host (NumPy) functions: the host function wrapped
as named tensors with static shapes, and the NumPy iterator over a pipeline that is closed at
interpreter exit. Shared by pretraining input (data/pretrain/) and fine-tuning pairs (pairs.py).
"""

import atexit
import gc
import weakref

import numpy as np
import tensorflow as tf

Shapes = dict[str, tuple[tuple[int, ...], np.dtype]]  # name -> (shape, NumPy dtype)


def host_tensors(host_fn, shapes: Shapes, *args) -> dict[str, tf.Tensor]:
  """host_fn(*args) -> tuple of NumPy arrays in `shapes`' order, as named tf.data tensors with
  their static shapes (so the jitted step compiles once)."""
  names = tuple(shapes)
  outs = tf.numpy_function(host_fn, list(args), [tf.as_dtype(shapes[n][1]) for n in names],
                           stateful=False)
  for out, name in zip(outs, names):
    out.set_shape(shapes[name][0])
  return dict(zip(names, outs))


class Batches:
  """Iterator of NumPy batches over a tf.data pipeline; closed at interpreter exit.

  Why: a tf.data iterator still alive when Python finalizes deadlocks the exit (its threads,
  running the pipeline's Python functions, wait forever for the GIL while the iterator's
  destructor waits for them). Every Batches is closed by an atexit hook, while Python still runs.
  """

  _live: "weakref.WeakSet[Batches]" = weakref.WeakSet()

  def __init__(self, dataset: tf.data.Dataset):
    self._iterator = dataset.as_numpy_iterator()
    Batches._live.add(self)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._iterator is None:
      raise StopIteration
    return next(self._iterator)

  def close(self) -> None:
    self._iterator = None


@atexit.register
def _close_all_batches():
  for batches in list(Batches._live):
    batches.close()
  gc.collect()
