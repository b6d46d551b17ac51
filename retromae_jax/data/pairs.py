"""Training groups for contrastive fine-tuning: (query, 1 positive, G-1 negatives) batches.

Sources (config.data.train):
  jsonl:GLOB   FlagEmbedding's format, one object per line: {"query": str, "pos": [str],
               "neg": [str]}; `neg` may be empty or missing; a string is read as a 1-list;
               optional teacher scores "pos_scores" / "neg_scores" ([float], one per text of
               `pos` / `neg`; config.loss.kd_weight > 0 needs them on every line)
  beir:DIR     a BEIR folder (data/evalsets/beir.py): the queries judged in qrels/{data.split}.tsv,
               positives = documents with relevance > 0, negatives = documents judged 0, plus
               the mined ones of config.data.hard_negatives (below), if given
  pydoc        the offline pydoc retrieval set (data/evalsets/pydoc_set.py) as `beir:`
  selfsup:SRC  label-free pairs made from a pretraining source's text (data/selfsup_pairs.py;
               options in config.data.selfsup)
Hard negatives for a BEIR source (config.data.hard_negatives): the jsonl file that
`python -m retromae_jax.tools.mine --data=DIR` writes, FlagEmbedding lines matched to the BEIR queries by
their text (queries missing from it keep their judged negatives only). The same file also
trains on its own as `jsonl:FILE`.

Each example has a uid (its line number, or its position in the qrels file); process p of P keeps
the examples with uid % P == p and only parses those.

The group of an example in epoch e is drawn with numpy's generator seeded by (seed, e, uid): one
positive among `pos`, and min(G-1, len(neg)) distinct negatives. An example with fewer than
G-1 negatives (none at all, FlagEmbedding's crash) fills the remaining slots with empty
passages marked invalid (`passage_valid` False): the loss leaves them out of every softmax, so
that query is trained against its own negatives and the whole global batch's passages
(in-batch negatives), never against padding and never against a repeated negative.

THE BATCH CONTRACT (per process: b = batch_size // process_count queries, G = group_size,
Lq = query_max_len, Lp = passage_max_len; texts tokenised with [CLS]/[SEP], truncated, padded):
  query_input_ids          int32 [b, Lq]
  query_attention_mask     int32 [b, Lq]
  passage_input_ids        int32 [b, G, Lp]   group i: its positive first, then its negatives
  passage_attention_mask   int32 [b, G, Lp]
  passage_valid            bool  [b, G]       False on unfilled negative slots
  in_batch_negatives       bool  [b]          False: the dataset's queries see their own group only
  teacher_scores           f32   [b, G]       the teacher's score of each passage (0 without)
Batch `step` is a pure function of (seed, step, process layout): epoch = step // steps_per_epoch,
each epoch a fresh permutation of this process's examples seeded by (seed, epoch, process
index), so a resumed run reads exactly the batches the uninterrupted one would have.
"""

import dataclasses
import json
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tokenizers
from absl import logging

from retromae_jax.data import jsonl, source_spec
from retromae_jax.data import tokenizer as tokenizer_lib
from retromae_jax.data import numpy_batches
from retromae_jax.data.evalsets import beir

SOURCES = "jsonl:GLOB, beir:DIR, pydoc or selfsup:SOURCE"


@dataclasses.dataclass(frozen=True)
class Example:
  uid: int  # position in the source: seeds this example's sampling
  query: str
  pos: tuple[str, ...]
  neg: tuple[str, ...] = ()
  pos_scores: tuple[float, ...] = ()  # teacher scores aligned with pos / neg (or empty)
  neg_scores: tuple[float, ...] = ()


# ----------------------------------------------------------------------------------- Reading


def text_field(path: str, line_no: int, record: dict, name: str) -> list[str]:
  """A FlagEmbedding line's list of texts (`pos`, `neg`): a string is a 1-list, absent is []."""
  value = record.get(name)
  if value is None:
    return []
  if isinstance(value, str):
    value = [value]
  if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
    raise ValueError(f"{path}:{line_no}: field {name!r} must be a list of strings, got "
                     f"{json.dumps(value)[:80]}")
  return value


def _texts(path: str, line_no: int, record: dict, name: str) -> tuple[str, ...]:
  return tuple(t for t in text_field(path, line_no, record, name) if t.strip())


def _scores(path: str, line_no: int, record: dict, name: str) -> tuple[float, ...] | None:
  """The teacher scores of the non-blank texts of field `name` ('pos' / 'neg'), None if the line
  has no `{name}_scores`; a list that does not align with the texts is an error."""
  value, texts = record.get(f"{name}_scores"), record.get(name)
  if value is None:
    return None
  value = [value] if isinstance(value, (int, float)) else value
  texts = [] if texts is None else [texts] if isinstance(texts, str) else texts
  if (not isinstance(value, list) or len(value) != len(texts)
      or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)):
    raise ValueError(f"{path}:{line_no}: field '{name}_scores' must be a list of {len(texts)} "
                     f"numbers, one per text of {name!r}, got {json.dumps(value)[:80]}")
  return tuple(float(x) for x, t in zip(value, texts) if isinstance(t, str) and t.strip())


def read_jsonl(pattern: str, process_index: int = 0, process_count: int = 1, *,
               require_scores: bool = False) -> list[Example]:
  """This process's examples of FlagEmbedding jsonl files (sorted glob, uid = line over all files).
  require_scores: every line must carry pos_scores (and neg_scores where it has negatives)."""
  files = sorted(tf.io.gfile.glob(pattern))
  if not files:
    raise ValueError(f"data.train 'jsonl:{pattern}': no file matches")
  examples, uid = [], -1
  for path in files:
    # Every process parses every line (cheap next to tokenising), so that a bad line fails the
    # run on every process alike.
    for line_no, record in jsonl.records(path):
      uid += 1
      if uid % process_count != process_index:
        continue
      if not isinstance(record.get("query"), str):
        raise ValueError(f"{path}:{line_no}: expected an object with a string 'query' field")
      pos, neg = _texts(path, line_no, record, "pos"), _texts(path, line_no, record, "neg")
      pos_scores, neg_scores = (_scores(path, line_no, record, n) for n in ("pos", "neg"))
      if require_scores and (pos_scores is None or (neg and neg_scores is None)):
        raise ValueError(f"{path}:{line_no}: no teacher scores ('pos_scores' / 'neg_scores'): "
                         "config.loss.kd_weight > 0 needs them on every line (add them with "
                         "python -m retromae_jax.tools.score)")
      examples.append(Example(uid, record["query"], pos, neg, pos_scores or (),
                              neg_scores or ()))
  return examples


def read_hard_negatives(path: str) -> dict[str, tuple[str, ...]]:
  """{query text: negative texts} from `python -m retromae_jax.tools.mine`'s output (FlagEmbedding
  lines {"query", "pos", "neg"}); a query on several lines gets all their negatives."""
  out: dict[str, dict[str, None]] = {}
  for example in read_jsonl(path):
    out.setdefault(example.query, {}).update(dict.fromkeys(example.neg))
  return {query: tuple(negatives) for query, negatives in out.items()}


def read_beir(beir_dir: str, split: str = "train", hard_negatives: str = "",
              process_index: int = 0, process_count: int = 1) -> list[Example]:
  """This process's examples of a BEIR split (uid = the query's position in the qrels file)."""
  data = beir.load(beir_dir, split)
  mined = read_hard_negatives(hard_negatives) if hard_negatives else {}
  if mined and not any(q in mined for q in data.queries.values()):
    raise ValueError(f"config.data.hard_negatives: no query of {beir_dir} split {split!r} is in "
                     f"{hard_negatives} (mine it from the same folder and split)")
  examples = []
  for uid, (qid, judged) in enumerate(data.qrels.items()):
    if uid % process_count != process_index:
      continue
    query = data.queries[qid]
    pos = tuple(data.corpus[d] for d, rel in judged.items() if rel > 0)
    neg = [data.corpus[d] for d, rel in judged.items() if rel <= 0]
    neg += [t for t in mined.get(query, ()) if t not in pos and t not in neg]
    examples.append(Example(uid, query, pos, tuple(neg)))
  return examples


def load_examples(source: str, split: str = "train", hard_negatives: str = "",
                  process_index: int = 0, process_count: int = 1, *,
                  require_scores: bool = False, selfsup: dict | None = None) -> list[Example]:
  """This process's share of `source` (module docstring); examples without a positive are
  dropped (and counted in the log): nothing can be learned from them. require_scores: teacher
  scores on every example (only jsonl sources carry them)."""
  parsed = source_spec.parse(source, "config.data.train", f"expected {SOURCES}",
                             schemes=("jsonl", "beir", "selfsup"))
  scheme, arg = parsed.scheme, parsed.arg
  if require_scores and scheme != "jsonl":
    raise ValueError(f"config.loss.kd_weight: {source!r} carries no teacher scores; distillation "
                     "reads them from jsonl lines (pos_scores / neg_scores)")
  if scheme == "jsonl":
    if hard_negatives:
      raise ValueError("config.data.hard_negatives: only for BEIR sources; jsonl lines carry "
                       "their negatives in 'neg'")
    examples = read_jsonl(arg, process_index, process_count, require_scores=require_scores)
  elif scheme == "beir":
    examples = read_beir(arg, split, hard_negatives, process_index, process_count)
  elif scheme == "selfsup":
    from retromae_jax.data import selfsup_pairs
    examples = [Example(uid, query, (positive,)) for uid, query, positive in
                selfsup_pairs.read(arg, process_index, process_count, **(selfsup or {}))]
  else:  # pydoc
    from retromae_jax.data.evalsets import pydoc_set  # builds the set on first use
    examples = read_beir(pydoc_set.cached_dir(), split, hard_negatives, process_index,
                         process_count)
  usable = [e for e in examples if e.pos]
  without_neg = sum(not e.neg for e in usable)
  logging.info("data: %s: %d examples in process %d's share (%d without a positive, dropped; "
               "%d without negatives)", source, len(usable), process_index,
               len(examples) - len(usable), without_neg)
  return usable


# ----------------------------------------------------------------------------------- Groups


def _draw(example: Example, group_size: int, seed: int, epoch: int):
  """(index of the positive, indices of up to G-1 distinct negatives) of the example's group."""
  rng = np.random.default_rng([seed, epoch, example.uid])
  positive = int(rng.integers(len(example.pos)))
  count = min(group_size - 1, len(example.neg))
  return positive, rng.choice(len(example.neg), count, replace=False)


def sample_group(example: Example, group_size: int, seed: int, epoch: int):
  """(G passage texts, bool [G] valid): a positive, then up to G-1 distinct negatives."""
  positive, negatives = _draw(example, group_size, seed, epoch)
  texts = [example.pos[positive], *[example.neg[i] for i in negatives],
           *[""] * (group_size - 1 - len(negatives))]
  valid = np.arange(group_size) <= len(negatives)
  return texts, valid


def group_scores(example: Example, group_size: int, seed: int, epoch: int) -> np.ndarray:
  """float32 [G]: the teacher's scores of sample_group's passages (0 where none)."""
  out = np.zeros(group_size, np.float32)
  if example.pos_scores:
    positive, negatives = _draw(example, group_size, seed, epoch)
    out[0] = example.pos_scores[positive]
    if example.neg_scores:
      out[1:1 + len(negatives)] = [example.neg_scores[i] for i in negatives]
  return out


def _fixed_length(tokenizer: tokenizers.Tokenizer, max_len: int) -> tokenizers.Tokenizer:
  """A copy that truncates and pads every text to exactly max_len tokens ([CLS]/[SEP] included).

  A copy: the batches are made in tf.data's threads, and configuring a shared tokenizer while
  another thread encodes with it is a race.
  """
  tok = tokenizers.Tokenizer.from_str(tokenizer.to_str())
  ids = tokenizer_lib.special_ids(tok)
  tok.enable_truncation(max_len)
  tok.enable_padding(length=max_len, pad_id=ids.pad, pad_token=tok.id_to_token(ids.pad))
  return tok


def batch_shapes(batch_size: int, group_size: int, query_max_len: int,
                 passage_max_len: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """name -> (shape, dtype) of every array of the batch contract, for `batch_size` queries."""
  queries = (batch_size, query_max_len)
  passages = (batch_size, group_size, passage_max_len)
  return {
      "query_input_ids": (queries, np.int32),
      "query_attention_mask": (queries, np.int32),
      "passage_input_ids": (passages, np.int32),
      "passage_attention_mask": (passages, np.int32),
      "passage_valid": ((batch_size, group_size), np.bool_),
      "in_batch_negatives": ((batch_size,), np.bool_),
      "teacher_scores": ((batch_size, group_size), np.float32),
  }


class GroupBatches:
  """Makes batch `step` of this process (the batch contract), a pure function of the step."""

  def __init__(self, examples: Sequence[Example], tokenizer: tokenizers.Tokenizer, *,
               batch_size: int, group_size: int, query_max_len: int, passage_max_len: int,
               seed: int, query_instruction: str = "", passage_instruction: str = "",
               process_index: int = 0, epoch_size: int | None = None,
               in_batch_negatives: bool = True):
    """batch_size: this process's queries per batch. epoch_size: examples used per epoch (the
    smallest share over processes, so that every process turns epochs at the same step).
    in_batch_negatives False: each query's softmax holds its own group only."""
    self.examples = list(examples)
    self.epoch_size = len(self.examples) if epoch_size is None else epoch_size
    if not 0 < self.epoch_size <= len(self.examples):
      raise ValueError(f"epoch_size {epoch_size}: expected 1..{len(self.examples)}")
    if self.epoch_size < batch_size:
      raise ValueError(f"config.batch_size: {batch_size} queries per process, but only "
                       f"{self.epoch_size} training examples per process")
    self.batch_size, self.group_size, self.seed = batch_size, group_size, seed
    self.query_instruction, self.passage_instruction = query_instruction, passage_instruction
    self.process_index, self.in_batch_negatives = process_index, in_batch_negatives
    self.steps_per_epoch = self.epoch_size // batch_size
    self._query_tok = _fixed_length(tokenizer, query_max_len)
    self._passage_tok = _fixed_length(tokenizer, passage_max_len)
    self.shapes = batch_shapes(batch_size, group_size, query_max_len, passage_max_len)

  def rows(self, step: int) -> list[Example]:
    epoch, index = divmod(step, self.steps_per_epoch)
    order = np.random.default_rng([self.seed, epoch, self.process_index]).permutation(
        len(self.examples))[:self.epoch_size]
    return [self.examples[i] for i in order[index * self.batch_size:(index + 1) * self.batch_size]]

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    epoch = step // self.steps_per_epoch
    rows = self.rows(step)
    groups = [sample_group(e, self.group_size, self.seed, epoch) for e in rows]
    queries = self._query_tok.encode_batch([self.query_instruction + e.query for e in rows])
    passages = self._passage_tok.encode_batch(
        [self.passage_instruction + t if t else "" for texts, _ in groups for t in texts])
    p_shape = self.shapes["passage_input_ids"][0]
    return {
        "query_input_ids": np.array([e.ids for e in queries], np.int32),
        "query_attention_mask": np.array([e.attention_mask for e in queries], np.int32),
        "passage_input_ids": np.array([e.ids for e in passages], np.int32).reshape(p_shape),
        "passage_attention_mask": np.array([e.attention_mask for e in passages],
                                           np.int32).reshape(p_shape),
        "passage_valid": np.stack([valid for _, valid in groups]),
        "in_batch_negatives": np.full(len(rows), self.in_batch_negatives),
        "teacher_scores": np.stack([group_scores(e, self.group_size, self.seed, epoch)
                                    for e in rows]),
    }


def group_batches(batches: GroupBatches, start_step: int = 0, prefetch: int = 2):
  """An iterator of batches start_step, start_step + 1, ... made in tf.data's threads (in order)."""
  names = tuple(batches.shapes)

  def make(step):
    batch = batches(int(step))
    return tuple(batch[n] for n in names)

  ds = tf.data.Dataset.counter(start_step).map(
      lambda step: numpy_batches.host_tensors(make, batches.shapes, step),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return numpy_batches.Batches(ds.prefetch(prefetch))
