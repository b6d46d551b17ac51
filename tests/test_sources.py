"""Document sources: formats, sharding, counted skips and one-line errors."""

import gzip
import json
import sys

import pytest

from retromae_jax.data import sources


def _docs(source, data_dir="", index=0, count=1, skips=None):
  ds = sources.documents(source, data_dir, index, count, skips=skips)
  return [d.decode("utf-8") for d in ds.as_numpy_iterator()]


def _write_jsonl(path, texts):
  path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))


def test_jsonl_and_text_with_gzip(tmp_path):
  _write_jsonl(tmp_path / "a.jsonl", ["first document.", "second document."])
  with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
    f.write(json.dumps({"text": "third, compressed.", "id": 3}) + "\n")
  assert _docs(f"jsonl:{tmp_path}/*.jsonl*") == [
      "first document.", "second document.", "third, compressed."]
  (tmp_path / "c.txt").write_text("line one\nline two\n")
  with gzip.open(tmp_path / "d.txt.gz", "wt") as f:
    f.write("line three\n")
  assert _docs(f"text:{tmp_path}/*.txt*") == ["line one", "line two", "line three"]


def test_bad_lines_are_skipped_and_counted(tmp_path):
  lines = [
      b'{"text": "good one"}',
      b"",  # empty
      b"   ",  # empty
      b"{not json",  # invalid_json
      b'{"text": 5}',  # missing_text (not a string)
      b'{"title": "no text"}',  # missing_text
      b'["a list"]',  # missing_text
      b'{"text": "  "}',  # empty text
      b'{"text": "caf\xff"}',  # non_utf8
      b'{"text": "lone \\ud800 surrogate"}',  # non_utf8 (cannot be encoded)
      b'\xef\xbb\xbf{"text": "after a byte-order mark"}',
      b'{"text": "good two"}',
  ]
  (tmp_path / "x.jsonl").write_bytes(b"\n".join(lines) + b"\n")
  skips = sources.SkipCounter()
  assert _docs(f"jsonl:{tmp_path}/x.jsonl", skips=skips) == [
      "good one", "after a byte-order mark", "good two"]
  assert skips.as_dict() == {"empty": 3, "invalid_json": 1, "missing_text": 3, "non_utf8": 2}
  assert skips.total == 9

  (tmp_path / "y.txt").write_bytes(b"fine\n\n\xff\xfe broken\nalso fine\n")
  skips = sources.SkipCounter()
  assert _docs(f"text:{tmp_path}/y.txt", skips=skips) == ["fine", "also fine"]
  assert skips.as_dict() == {"empty": 1, "invalid_json": 0, "missing_text": 0, "non_utf8": 1}


@pytest.mark.parametrize("source, message", [
    ("jsonl:/nonexistent/dir/*.jsonl", "no file matches '/nonexistent/dir/*.jsonl'"),
    ("text:/nonexistent/file.txt", "no file matches"),
    ("csv:/data/*.csv", "unknown or incomplete source; expected jsonl:GLOB"),
    ("jsonl", "unknown or incomplete source"),
    ("pydoc:extra", "unknown or incomplete source"),
    ("tfds:surely_not_a_dataset_name", "TFDS dataset 'surely_not_a_dataset_name' not found"),
])
def test_errors_name_the_source(source, message):
  with pytest.raises(ValueError, match="data.source") as err:
    sources.documents(source)
  assert message in str(err.value) and source in str(err.value)
  assert "\n" not in str(err.value)


def test_process_index_is_checked():
  with pytest.raises(ValueError, match="process_index 2"):
    sources.documents("pydoc", "", 2, 2)


@pytest.mark.parametrize("num_files, count", [(4, 2), (3, 2), (1, 3), (30, 4), (41, 4)])
def test_process_shards_are_disjoint_and_complete(tmp_path, num_files, count):
  texts = [f"document {i}" for i in range(37)]
  for f in range(num_files):
    _write_jsonl(tmp_path / f"part-{f:02d}.jsonl", texts[f::num_files])
  shards = [_docs(f"jsonl:{tmp_path}/*.jsonl", index=i, count=count) for i in range(count)]
  everything = [d for shard in shards for d in shard]
  assert sorted(everything) == sorted(texts)  # each document exactly once
  assert all(shards)


def test_pydoc_is_deterministic_and_sharded_by_element():
  before = set(sys.modules)
  texts = sources.pydoc_texts()
  assert not {"antigravity", "this", "turtle"} & (set(sys.modules) - before)  # parsed, not imported
  assert len(texts) > 1000 and all(len(t) > 200 for t in texts)
  assert sum(map(len, texts)) > 500_000
  assert sources.pydoc_texts() is texts  # cached
  shards = [_docs("pydoc", index=i, count=3) for i in range(3)]
  assert sorted(d for s in shards for d in s) == sorted(texts)
  assert shards[1][:2] == [texts[1], texts[4]]


def test_tfds_text_feature(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")

  class TinyPretrainTexts(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i in range(10):
        yield i, {"text": "" if i == 3 else f"document number {i}."}

  TinyPretrainTexts(data_dir=str(tmp_path)).download_and_prepare()
  skips = sources.SkipCounter()
  docs = _docs("tfds:tiny_pretrain_texts", str(tmp_path), skips=skips)
  assert sorted(docs) == sorted(f"document number {i}." for i in range(10) if i != 3)
  assert skips.as_dict()["empty"] == 1
  halves = [_docs("tfds:tiny_pretrain_texts:train", str(tmp_path), i, 2) for i in range(2)]
  assert sorted(halves[0] + halves[1]) == sorted(docs) and halves[0] and halves[1]
  with pytest.raises(ValueError, match="cannot read split 'test'"):
    sources.documents("tfds:tiny_pretrain_texts:test", str(tmp_path))
  with pytest.raises(ValueError, match="expected a prepared dataset"):
    sources.documents("tfds:tiny_pretrain_texts", str(tmp_path / "elsewhere"))


def test_pydoc_modules_holds_the_same_docstrings_grouped_by_module():
  per_docstring = sources.pydoc_texts()
  per_module = sources.pydoc_texts(per_module=True)
  assert 0 < len(per_module) < len(per_docstring)
  # Joined in order, the modules are exactly the docstrings with blank lines between them.
  assert "\n\n".join(per_module) == "\n\n".join(per_docstring)
  assert len(_docs("pydoc:modules")) == len(per_module)
