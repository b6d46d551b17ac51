"""A label-free evaluation set from unlabeled text: documents held out of training, each giving a
pseudo-query (by default inverse cloze: one of its sentences) whose one relevant document is the
passage around that sentence, the sentence removed.

  python -m retromae_jax.tools.holdout --source=SOURCE --out=DIR [--fraction=0.1] [--seed=0]
      [--window_words=100] [--max_documents=N] [--kinds=ict]

--kinds: the pair kinds of data/selfsup_pairs.py the pseudo-queries are drawn from (ict, heading,
crops). Score a kind that training does not use: a signal made of the training task's own pairs
rewards the task (bench/RESULTS.md, issue 21). The held-out documents depend on the text and
--fraction only, so two kinds written to two folders hold out the same documents (the same
train.jsonl).

SOURCE: any pretraining source (data/sources.py, or a prepared corpus). Writes
  DIR/train.jsonl   the documents NOT held out, {"text": ...} per line: train on these
                    (data.source=jsonl:DIR/train.jsonl, data.train=selfsup:jsonl:DIR/train.jsonl)
  DIR/heldout/      a BEIR folder (split 'test'): set eval.data=DIR/heldout and the periodic
                    evaluator scores it while either stage trains; `tools.evaluate` scores a
                    finished model on it
Which documents are held out is a function of their text alone (selfsup_pairs.held_out), so
the split does not depend on the order or sharding of the source. A user without labels reads
this set's nDCG@10: does adaptation help, and when to stop.
"""

import json
import os

from absl import app, flags, logging

from retromae_jax.data.evalsets import beir
from retromae_jax.data import selfsup_pairs
from retromae_jax.tools import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("source", None, "a pretraining source: jsonl:GLOB, text:GLOB, tfds:..., "
                    "pydoc, prepared:DIR")
flags.DEFINE_string("out", None, "output directory")
flags.DEFINE_float("fraction", 0.1, "share of the documents held out")
flags.DEFINE_integer("seed", 0, "draws the sentence of each held-out document")
flags.DEFINE_integer("window_words", 100, "words of context around the sentence, at most")
flags.DEFINE_integer("max_documents", 0, "read at most this many documents (0 = all)")
flags.DEFINE_string("data_dir", "", "TFDS data_dir, for tfds: sources")
flags.DEFINE_string("kinds", "ict", "comma-separated pair kinds of the pseudo-queries, from "
                    f"{selfsup_pairs.KINDS}")


def main(argv):
  del argv
  if not FLAGS.source or not FLAGS.out:
    raise app.UsageError("--source and --out are required")
  if not 0 < FLAGS.fraction < 1:
    raise app.UsageError(f"--fraction: expected a share in (0, 1), got {FLAGS.fraction}")
  try:
    selfsup_pairs.Options(kinds=FLAGS.kinds).check()
  except ValueError as e:
    raise app.UsageError(f"--kinds: {e}") from None
  texts = selfsup_pairs.read_documents(FLAGS.source, FLAGS.data_dir, FLAGS.max_documents)
  train, corpus, queries, qrels = selfsup_pairs.holdout_split(
      texts, FLAGS.fraction, FLAGS.seed, FLAGS.window_words, FLAGS.kinds)
  if not queries:
    raise app.UsageError(f"--source {FLAGS.source}: no held-out document (of {len(texts)}) gave "
                         f"a pair of kinds {FLAGS.kinds!r}; raise --fraction or change --kinds")
  os.makedirs(FLAGS.out, exist_ok=True)
  with open(os.path.join(FLAGS.out, "train.jsonl"), "w", encoding="utf-8") as f:
    for text in train:
      f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
  beir.write(os.path.join(FLAGS.out, "heldout"), corpus, queries, {"test": qrels})
  logging.info("%d documents: %d to train on (%s), %d held out as pseudo-queries (%s)",
               len(texts), len(train), os.path.join(FLAGS.out, "train.jsonl"), len(queries),
               os.path.join(FLAGS.out, "heldout"))


if __name__ == "__main__":
  cli.run(main)
