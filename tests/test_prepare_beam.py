"""The prepare command on Apache Beam (DirectRunner, two worker processes) writes the same
prepared corpus as the local engine: byte-identical chunk records, document indexes and packing
plans, the same statistics. (The local engine is tested against the raw pipeline in
test_prepared.py.)"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("apache_beam")  # requirements-test.txt installs it (requirements-beam.txt)

from array_record.python import array_record_data_source  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _prepare(corpus, out, *engine):
  proc = subprocess.run(
      [sys.executable, "-m", "retromae_jax.tools.prepare", f"--source=jsonl:{corpus}",
       f"--out={out}", "--config=configs/base.py:smoke", "--config.data.max_seq_length=64",
       "--num_workers=3", *engine],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(out, "prepared.json"), encoding="utf-8") as f:
    return json.load(f)


def _records(path):
  source = array_record_data_source.ArrayRecordDataSource([path])
  return [source[i] for i in range(len(source))]


def test_beam_engine_writes_what_the_local_engine_writes(corpus, tmp_path):
  local = _prepare(corpus, str(tmp_path / "local"))
  beam = _prepare(corpus, str(tmp_path / "beam"), "--engine=beam", "--",
                  "--runner=DirectRunner", "--direct_num_workers=2",
                  "--direct_running_mode=multi_processing")
  for meta in (local, beam):
    del meta["seconds"]
  assert beam == local
  assert local["stats"]["chunks"] > 0 and len(local["shards"]) == 3
  for shard in local["shards"]:
    assert (_records(str(tmp_path / "beam" / shard["chunks"]))
            == _records(str(tmp_path / "local" / shard["chunks"])))
    for index in ("documents", "rows"):  # each chunk's document; its packed row (data.pack)
      np.testing.assert_array_equal(np.load(tmp_path / "beam" / shard[index]),
                                    np.load(tmp_path / "local" / shard[index]), err_msg=index)


def test_pipeline_options_without_the_beam_engine_are_refused(corpus, tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "retromae_jax.tools.prepare", f"--source=jsonl:{corpus}",
       f"--out={tmp_path / 'out'}", "--", "--runner=DirectRunner"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode != 0
  assert "only --engine=beam takes pipeline options" in proc.stderr
