"""Several training datasets, one per batch (config.data.train with several sources).

  data.train = SOURCE[@WEIGHT][;OPTION=VALUE]... , SOURCE[@WEIGHT][;OPTION=VALUE]... , ...

SOURCE is one of data/pairs.py's (jsonl:GLOB, beir:DIR, pydoc); WEIGHT (default 1) is the
dataset's share of the batches; OPTIONs (default: the data.* keys of the same name):
  in_batch_negatives=true|false   false: each query's softmax holds its own group only
                                  (FlagEmbedding's `no_in_batch_neg`, e.g. for classification
                                  or clustering data, whose other groups are no negatives)
  query_instruction=TEXT          prepended to this dataset's queries
  passage_instruction=TEXT        prepended to this dataset's passages
e.g. `jsonl:qa.jsonl@2,jsonl:nli.jsonl@1;in_batch_negatives=false;query_instruction=Query: `.
Sources are split at the commas that start a new source (`jsonl:`, `beir:`, `selfsup:`,
`pydoc`), so an instruction may hold commas; it may not hold ';'.

Every batch comes from one dataset (mixing tasks in a batch makes false in-batch negatives). The
dataset of step s is drawn by weight from numpy's generator seeded by (seed, s // BLOCK): a pure
function of (seed, step), the same on every process whatever their number; the batch it takes is
the dataset's own next one (its k-th batch if it was drawn k times before s), itself a pure
function of the step (data/pairs.py). A resumed run therefore reads the batches of the
uninterrupted one.
"""

import dataclasses
import re
import threading

import numpy as np

BLOCK = 4096  # steps whose datasets are drawn together
_OPTIONS = ("in_batch_negatives", "query_instruction", "passage_instruction")
_SOURCE_START = re.compile(r",\s*(?=jsonl:|beir:|selfsup:|pydoc(?:$|[@;,]))")
_MIX_STREAM = 0x6d6978  # keeps the mixture's draws apart from other uses of the seed


@dataclasses.dataclass(frozen=True)
class Dataset:
  source: str
  weight: float = 1.0
  in_batch_negatives: bool | None = None  # None: the data.* default
  query_instruction: str | None = None
  passage_instruction: str | None = None


def parse(spec: str) -> list[Dataset]:
  """The datasets of a data.train value (module docstring); a one-line ValueError if malformed."""
  out = []
  for part in _SOURCE_START.split(spec.strip()):
    head, *options = part.split(";")
    source, weight = head.strip(), 1.0
    if "@" in source:
      source, _, text = source.rpartition("@")
      try:
        weight = float(text)
      except ValueError:
        raise ValueError(f"config.data.train: {head!r}: the weight after '@' must be a number, "
                         f"got {text!r}") from None
      if not weight > 0:
        raise ValueError(f"config.data.train: {head!r}: expected a weight > 0, got {text!r}")
    fields = {}
    for option in options:
      name, eq, value = option.partition("=")
      name = name.strip()
      if not eq or name not in _OPTIONS:
        raise ValueError(f"config.data.train: {source!r}: option {option!r}; expected NAME=VALUE "
                         f"with NAME one of {', '.join(_OPTIONS)}")
      if name == "in_batch_negatives":
        if value.strip().lower() not in ("true", "false"):
          raise ValueError(f"config.data.train: {source!r}: in_batch_negatives must be true or "
                           f"false, got {value!r}")
        fields[name] = value.strip().lower() == "true"
      else:
        fields[name] = value
    if not source:
      raise ValueError(f"config.data.train: {spec!r}: an empty source")
    out.append(Dataset(source, weight, **fields))
  return out


class MixedBatches:
  """Batch `step` of several data/pairs.GroupBatches, one dataset per batch, drawn by weight."""

  def __init__(self, datasets, weights, seed: int):
    if len(datasets) != len(weights) or not datasets:
      raise ValueError(f"MixedBatches: {len(datasets)} datasets for {len(weights)} weights")
    shapes = {tuple(map(tuple, (s for s, _ in d.shapes.values()))) for d in datasets}
    if len(shapes) != 1:
      raise ValueError("MixedBatches: the datasets make batches of different shapes")
    self.datasets, self.seed = list(datasets), seed
    self.shapes = self.datasets[0].shapes
    weights = np.asarray(weights, np.float64)
    self.probabilities = weights / weights.sum()
    self._blocks: list[np.ndarray] = []  # the drawn datasets of block b
    self._before: list[np.ndarray] = []  # [K] batches each dataset gave before block b
    self._lock = threading.Lock()  # batches are made in tf.data's threads

  def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
    with self._lock:
      while len(self._blocks) <= b:
        n = len(self._blocks)
        rng = np.random.default_rng([self.seed, _MIX_STREAM, n])
        drawn = rng.choice(len(self.datasets), BLOCK, p=self.probabilities)
        before = (np.zeros(len(self.datasets), np.int64) if n == 0 else
                  self._before[-1] + np.bincount(self._blocks[-1], minlength=len(self.datasets)))
        self._blocks.append(drawn)
        self._before.append(before)
      return self._blocks[b], self._before[b]

  def position(self, step: int) -> tuple[int, int]:
    """(dataset index, that dataset's own batch index) of batch `step`."""
    b, offset = divmod(step, BLOCK)
    drawn, before = self._block(b)
    k = int(drawn[offset])
    return k, int(before[k] + np.count_nonzero(drawn[:offset] == k))

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    k, index = self.position(step)
    return self.datasets[k](index)
