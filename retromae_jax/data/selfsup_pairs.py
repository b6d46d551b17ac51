"""Label-free training pairs from unlabeled text: config.data.train = selfsup:SOURCE.

SOURCE is any pretraining source (data/sources.py: jsonl:, text:, tfds:, pydoc, or a prepared
corpus, whose chunks are decoded back to text with its own tokenizer). Each document gives
data.selfsup.views pairs (query, positive), of a kind drawn among data.selfsup.kinds that the
document allows:

  crops    two independent random spans of one window of the document (Contriever): each
           crop_min..crop_max of the window's words, placed independently (they may overlap)
  ict      the inverse cloze task (Lee et al. 2019): one sentence against the window of
           sentences around it, the sentence itself removed
  heading  a heading (a markdown '#' line, or a short line without final punctuation) against
           the body under it; only documents with such structure

A window is at most data.selfsup.window_words words (about what one passage holds). Pairs have
no negatives: in-batch negatives only (data.group_size=1).

Every pair is a pure function of (seed, the document's text, view): drawn once when the examples
are loaded, so batch `step` stays a pure function of (seed, step) and a resumed run reads the
batches the uninterrupted one would have (pairs.GroupBatches). Example uids number
(document, view) over the whole source; process p keeps uid % P == p (pairs.py).

held_out(text, fraction) is the split tools/holdout.py writes: the documents it holds out for
the label-free evaluation set are never in its train file.
"""

import dataclasses
import hashlib
import os
import re

import numpy as np

from retromae_jax.data import source_spec
from retromae_jax.data.pretrain import chunking

KINDS = ("crops", "ict", "heading")
MIN_SENTENCE_WORDS = 4  # an ICT query shorter than this is mostly noise ("See below.")
MIN_BODY_WORDS = 10
_HEADING_WORDS = 10


@dataclasses.dataclass(frozen=True)
class Options:
  """data.selfsup (configs/finetune.py)."""
  kinds: str = "crops,ict"  # comma-separated, from KINDS
  views: int = 1  # pairs per document
  window_words: int = 100  # about what a 128-token passage holds
  crop_min: float = 0.1  # a crop's share of the window's words (Contriever: 0.1 .. 0.5)
  crop_max: float = 0.5
  max_documents: int = 0  # read at most this many documents (0 = all)

  def kind_list(self) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in self.kinds.split(",") if k.strip())
    bad = [k for k in kinds if k not in KINDS]
    if not kinds or bad:
      raise ValueError(f"config.data.selfsup.kinds: expected a comma-separated list from {KINDS}, "
                       f"got {self.kinds!r}")
    return kinds

  def check(self):
    self.kind_list()
    if self.views < 1 or self.window_words < 8 or self.max_documents < 0:
      raise ValueError("config.data.selfsup: expected views >= 1, window_words >= 8 and "
                       f"max_documents >= 0, got {self.views}, {self.window_words}, "
                       f"{self.max_documents}")
    if not 0 < self.crop_min <= self.crop_max <= 1:
      raise ValueError("config.data.selfsup: expected 0 < crop_min <= crop_max <= 1, got "
                       f"{self.crop_min}, {self.crop_max}")


# ----------------------------------------------------------------------------------- Reading


def read_documents(source: str, data_dir: str = "", max_documents: int = 0) -> list[str]:
  """Every document of a pretraining source, in the source's order (all processes alike)."""
  if source_spec.is_prepared(source):
    return _prepared_texts(source, max_documents)
  from retromae_jax.data import sources  # tf.data: only for raw sources
  ds = sources.documents(source, data_dir)
  if max_documents:
    ds = ds.take(max_documents)
  return [t.decode("utf-8") for t in ds.as_numpy_iterator()]


def _prepared_texts(source: str, max_documents: int) -> list[str]:
  """A prepared corpus's chunks, decoded with the tokenizer it was prepared with."""
  from retromae_jax.data.pretrain import prepared
  from retromae_jax.data import tokenizer as tokenizer_lib
  texts = []
  for directory, _ in prepared.parse_source(source):
    corpus = prepared.PreparedCorpus(directory)
    tok = tokenizer_lib.load_tokenizer(os.path.join(directory, "tokenizer"))
    count = len(corpus) if not max_documents else min(len(corpus), max_documents - len(texts))
    for start in range(0, count, 1024):
      chunks = corpus.chunks(np.arange(start, min(start + 1024, count)))
      texts += tok.decode_batch([c.tolist() for c in chunks])
    if max_documents and len(texts) >= max_documents:
      break
  return texts


def held_out(text: str, fraction: float) -> bool:
  """Whether the document belongs to the held-out share: by a hash of its text, so the split
  does not depend on the order or sharding of the source."""
  digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
  return int.from_bytes(digest, "little") / 2**64 < fraction


def holdout_split(texts, fraction: float, seed: int, window_words: int, kinds: str = "ict"):
  """tools/holdout.py's split: (train texts, corpus {id: passage}, queries {id: pseudo-query},
  qrels {qid: {id: 1}}). A held-out document gives one pair of `kinds` (or none: neither trained
  on nor scored); which documents are held out depends on their text and `fraction` only."""
  opts = Options(kinds=kinds, window_words=window_words)
  opts.check()
  train, corpus, queries, qrels = [], {}, {}, {}
  for n, text in enumerate(texts):
    if not held_out(text, fraction):
      train.append(text)
      continue
    pair = make_pair(text, opts, seed, view=0)
    if pair is None:
      continue
    corpus[f"d{n}"], queries[f"q{n}"] = pair[1], pair[0]
    qrels[f"q{n}"] = {f"d{n}": 1}
  return train, corpus, queries, qrels


# ----------------------------------------------------------------------------------- Pairs


def _window(words: list[str], size: int, rng) -> list[str]:
  start = int(rng.integers(max(len(words) - size, 0) + 1))
  return words[start:start + size]


def crop_pair(text: str, opts: Options, rng) -> tuple[str, str] | None:
  words = _window(text.split(), opts.window_words, rng)
  if len(words) < 2 * MIN_SENTENCE_WORDS:
    return None

  def crop():
    n = max(int(round(len(words) * rng.uniform(opts.crop_min, opts.crop_max))), 1)
    start = int(rng.integers(len(words) - n + 1))
    return " ".join(words[start:start + n])

  return crop(), crop()


def sentences(text: str) -> list[str]:
  """The document's sentences (chunking's sentence split), paragraph breaks kept as breaks."""
  out = []
  for paragraph in re.split(r"\n\s*\n", text):
    out += [s.strip() for s in chunking.sentence_pieces(paragraph) if s.strip()]
  return out


def ict_pair(text: str, opts: Options, rng) -> tuple[str, str] | None:
  sents = sentences(text)
  lengths = [len(s.split()) for s in sents]
  candidates = [i for i, n in enumerate(lengths) if n >= MIN_SENTENCE_WORDS]
  if len(sents) < 2 or not candidates:
    return None
  i = candidates[int(rng.integers(len(candidates)))]
  # The context: the sentences on both sides of i, one side then the other, each side stopping
  # at the first sentence that no longer fits the window (the context stays contiguous).
  chosen, budget, open_sides = [], opts.window_words, {1: True, -1: True}
  for step in range(1, len(sents)):
    for side in (1, -1):
      j = i + side * step
      if not open_sides[side] or not 0 <= j < len(sents):
        continue
      if lengths[j] > budget:
        open_sides[side] = False
        continue
      chosen.append(j)
      budget -= lengths[j]
  if sum(lengths[j] for j in chosen) < MIN_BODY_WORDS:
    return None
  return sents[i], " ".join(sents[j] for j in sorted(chosen))


def headings(text: str) -> list[tuple[str, str]]:
  """(heading, body) pairs: a markdown '#' line, or a short line without final punctuation
  followed by at least MIN_BODY_WORDS words before the next heading."""
  out, heading, body = [], None, []

  def close():
    if heading is not None and len(" ".join(body).split()) >= MIN_BODY_WORDS:
      out.append((heading, " ".join(body)))

  for line in text.splitlines():
    stripped = line.strip()
    if not stripped:
      continue
    is_heading = stripped.startswith("#") or (
        len(stripped.split()) <= _HEADING_WORDS and not stripped.endswith((".", ",", ";", ":"))
        and stripped[0].isalpha())
    if is_heading:
      close()
      heading, body = stripped.lstrip("#").strip(), []
    else:
      body.append(stripped)
  close()
  return [(h, b) for h, b in out if h]


def heading_pair(text: str, opts: Options, rng) -> tuple[str, str] | None:
  found = headings(text)
  if not found:
    return None
  head, body = found[int(rng.integers(len(found)))]
  return head, " ".join(body.split()[:opts.window_words])


MAKERS = {"crops": crop_pair, "ict": ict_pair, "heading": heading_pair}


def make_pair(text: str, opts: Options, seed: int, view: int) -> tuple[str, str] | None:
  """One (query, positive) of the document, or None where no configured kind applies. A pure
  function of (seed, text, view): the kinds are tried in an order drawn from the same key."""
  key = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")
  rng = np.random.default_rng([seed, key, view])
  kinds = opts.kind_list()
  for k in rng.permutation(len(kinds)):
    pair = MAKERS[kinds[k]](text, opts, rng)
    if pair is not None:
      return pair
  return None


def read(source: str, process_index: int = 0, process_count: int = 1, *, seed: int = 0,
         data_dir: str = "", **options):
  """This process's pairs for data.train=selfsup:SOURCE (module docstring): (uid, query,
  positive) triples, which data/pairs.py makes its Examples of."""
  opts = Options(**options)
  opts.check()
  texts = read_documents(source, data_dir, opts.max_documents)
  if not texts:
    raise ValueError(f"config.data.train selfsup:{source}: the source has no document")
  examples = []
  for d, text in enumerate(texts):
    for view in range(opts.views):
      uid = d * opts.views + view
      if uid % process_count != process_index:
        continue
      pair = make_pair(text, opts, seed, view)
      if pair is not None:
        examples.append((uid, pair[0], pair[1]))
  return examples
