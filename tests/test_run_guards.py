"""A run that can be trusted with a pod's week (issue 23): each fault a new user meets, injected
into the real programs, one test per fault. For each: the exit status, the one last line of
stderr (naming the file, the key, or the lock's host and pid), the time to fail (before the
model compiles where that is promised: no "Compiled step" line, seconds not minutes) and that
nothing in the workdir changed. Program runs are shared: one short pretraining run makes the
workdir that the refused resumes and the second run meet; the rest fail before compiling."""

import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from configs.base import get_config
from configs import finetune as finetune_config
from retromae_jax.data.evalsets import beir
from retromae_jax.trainers import settings
from retromae_jax.data import pairs_checks
from retromae_jax.data.pretrain import prepare
from retromae_jax.data.pretrain import prepared
from retromae_jax.trainers import preflight
from retromae_jax.trainers import run_identity
from retromae_jax.trainers import workdir_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN = ["--config=configs/base.py:smoke", "--config.batch_size=4",
            "--config.data.max_seq_length=64", "--config.data.shuffle_buffer=100",
            "--config.log_every=1", "--config.total_steps=2", "--config.checkpoint_every=2"]
BEFORE_COMPILING_S = 90  # start-up checks only (imports, the files): a busy 2-core machine; the
# promise itself is asserted by the absence of the compile log line
COMPILED = "Compiled step"


def _main(workdir, *args, wait=True):
  command = [sys.executable, "-m", "retromae_jax.main", f"--workdir={workdir}", *args]
  if not wait:
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
  return _timed(command)


def _timed(command, **kwargs):
  """(returncode, stderr, seconds)."""
  start = time.monotonic()
  proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, **kwargs)
  return proc.returncode, proc.stderr, time.monotonic() - start


def _last_line(stderr):
  return stderr.rstrip("\n").splitlines()[-1]


def _assert_one_line_error(rc, stderr, seconds, starts=None, contains=()):
  assert rc == 1, stderr[-3000:]
  last = _last_line(stderr)
  if starts is not None:
    assert last.startswith(starts), last
  for text in contains:
    assert text in last, last
  assert "Traceback" not in stderr, stderr[-3000:]
  assert COMPILED not in stderr and seconds < BEFORE_COMPILING_S, (seconds, stderr[-2000:])
  return last


def _snapshot(directory):
  """{relative path: (size, sha256)} of every file under `directory`."""
  out = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, directory)] = (os.path.getsize(path),
                                                 hashlib.sha256(f.read()).hexdigest())
  return out


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
  monkeypatch.chdir(ROOT)


# ------------------------------------------------------------------------------ The workdir:
# one short run; a second run meets its lock; refused resumes meet its checkpoint.


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
  """A run stopped by SIGTERM once a second run started on its workdir has ended: (workdir, the
  first run's pid and stderr, the second run's (returncode, stderr, seconds))."""
  workdir = str(tmp_path_factory.mktemp("guards") / "run")
  source = f"--config.data.source=jsonl:{corpus}"
  first = _main(workdir, *PRETRAIN, source, "--config.total_steps=100000",
                "--config.checkpoint_every=100000", wait=False)
  lock = os.path.join(workdir, workdir_lock.LOCK_FILE)
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.monotonic() + 300
  while not (os.path.isfile(lock) and os.path.getsize(lock)) and time.monotonic() < deadline:
    time.sleep(0.05)
  second = _main(workdir, *PRETRAIN, source)
  # SIGTERM once the first run trains (its handler is installed): it saves and exits 0.
  while not (os.path.isfile(metrics) and os.path.getsize(metrics)) and time.monotonic() < deadline:
    time.sleep(0.05)
  first.send_signal(signal.SIGTERM)
  _, stderr = first.communicate(timeout=600)
  assert first.returncode == 0, stderr[-3000:]
  return workdir, first.pid, second


def _latest_step(workdir):
  return max(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())


def test_a_second_run_on_a_busy_workdir_refuses_in_seconds_naming_host_and_pid(trained):
  workdir, pid, (rc, stderr, seconds) = trained
  _assert_one_line_error(rc, stderr, seconds, starts=f"{workdir}: in use by another run (host "
                         f"{socket.gethostname()}, pid {pid}, started ")
  # The first run was not disturbed: every step logged once, in order, up to the one SIGTERM
  # saved; and its lock was released on the way out.
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    steps = [json.loads(line)["step"] for line in f]
  assert steps == list(range(1, len(steps) + 1)) and steps[-1] == _latest_step(workdir)
  assert not os.path.exists(os.path.join(workdir, workdir_lock.LOCK_FILE))


def test_a_resume_of_another_run_is_refused_before_compiling_naming_each_key(trained, corpus,
                                                                          tmp_path):
  workdir, _, _ = trained
  before = _snapshot(workdir)
  other = tmp_path / "other.jsonl"
  other.write_text(open(corpus, encoding="utf-8").read())
  rc, stderr, seconds = _main(workdir, *PRETRAIN, f"--config.data.source=jsonl:{other}",
                              "--config.batch_size=8", "--config.model.num_layers=3")
  last = _assert_one_line_error(rc, stderr, seconds, starts=f"{workdir}/checkpoints/"
                                f"{_latest_step(workdir)}: this workdir holds another run (")
  for expected in ("batch_size: 4 -> 8", f"data.source: 'jsonl:{corpus}' -> 'jsonl:{other}'",
                   "model.num_layers: 2 -> 3",
                   "--config.resume.allow_changes=batch_size,data.source,model.num_layers"):
    assert expected in last, last
  assert len(last) < 600
  assert _snapshot(workdir) == before  # config.json, metrics, checkpoints: all as they were


def test_allowed_changes_are_logged_and_other_keys_still_refused():
  config = get_config("smoke")
  recorded = run_identity.of(config)
  assert "total_steps" not in recorded and "eval.every_steps" not in recorded  # free to change
  with config.unlocked():
    config.batch_size, config.seed, config.total_steps = 8, 5, 7
    config.resume.allow_changes = "batch_size"
  with pytest.raises(ValueError, match=r"this workdir holds another run \(seed: 0 -> 5\); .*"
                                       r"allow_changes=seed to change them on purpose$"):
    run_identity.check_resume(config, recorded, "STEP")
  with config.unlocked():
    config.resume.allow_changes = "batch_size, seed"
  run_identity.check_resume(config, recorded, "STEP")  # passes (logged as changed on purpose)
  with config.unlocked():
    config.resume.allow_changes = "total_steps"
  with pytest.raises(ValueError, match=r"allow_changes: \['total_steps'\] are not guarded"):
    run_identity.check_resume(config, recorded, "STEP")


def test_a_stale_lock_is_reported_with_its_host_and_pid_and_taken_over(tmp_path, caplog):
  workdir = str(tmp_path)
  # A holder killed with SIGKILL: the kernel dropped its lock, its file stays.
  holder = subprocess.Popen([sys.executable, "-c", (
      "import sys, time; from retromae_jax.trainers import workdir_lock\n"
      f"with workdir_lock.hold({workdir!r}):\n  print('held', flush=True); time.sleep(600)")],
      cwd=ROOT, stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "held"
  with pytest.raises(workdir_lock.Busy, match=f"pid {holder.pid}"):
    with workdir_lock.hold(workdir):
      pass
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  with workdir_lock.hold(workdir):
    with open(os.path.join(workdir, workdir_lock.LOCK_FILE), encoding="utf-8") as f:
      assert json.load(f)["pid"] == os.getpid()
  assert f"pid {holder.pid}" in caplog.text and "stale lock" in caplog.text
  assert not os.listdir(workdir)  # released: the file is gone


# ------------------------------------------------------------------------------ Prepared corpora


@pytest.fixture(scope="module")
def prepared_dir(corpus, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("prepared") / "corpus")
  prepare.prepare(f"jsonl:{corpus}", out, settings.pretrain_input(_pretrain_config("")), num_workers=1)
  return out


def _pretrain_config(source):
  c = get_config("smoke")
  c.data.source = source
  c.data.max_seq_length = 64
  c.batch_size = 4
  return c


def _damaged_copy(src, dst, damage):
  import shutil
  shutil.copytree(src, dst)
  with open(os.path.join(dst, prepared.META), encoding="utf-8") as f:
    meta = json.load(f)
  damage(dst, meta)
  return str(dst)


def _edit_meta(directory, meta, edit):
  edit(meta)
  with open(os.path.join(directory, prepared.META), "w", encoding="utf-8") as f:
    json.dump(meta, f)


def test_prepared_json_records_sizes_and_checksums_that_match_the_files(prepared_dir):
  with open(os.path.join(prepared_dir, prepared.META), encoding="utf-8") as f:
    meta = json.load(f)
  (shard,) = meta["shards"]
  for name in (shard["chunks"], shard["rows"], shard["documents"]):
    with open(os.path.join(prepared_dir, name), "rb") as f:
      data = f.read()
    assert shard["files"][name] == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_an_edited_pack_rows_is_refused_naming_the_field(prepared_dir, tmp_path):
  def fewer_rows(directory, meta):
    _edit_meta(directory, meta, lambda m: m["pack"].update(rows=m["pack"]["rows"] // 2))
  bad = _damaged_copy(prepared_dir, tmp_path / "c", fewer_rows)
  with pytest.raises(ValueError, match=rf"{bad}/prepared.json: pack.rows is \d+, its shards' "
                                       r"num_rows add up to \d+; the file was edited"):
    prepared.PreparedCorpus(bad)

  def both_edited(directory, meta):  # pack.rows and the shard's count edited alike
    half = meta["pack"]["rows"] // 2
    meta["shards"][0]["num_rows"] = half
    _edit_meta(directory, meta, lambda m: m["pack"].update(rows=half))
  bad = _damaged_copy(prepared_dir, tmp_path / "d", both_edited)
  with pytest.raises(ValueError, match=r"rows-00000-of-00001.npy: plans \d+ rows, prepared.json "
                                       r"says num_rows \d+"):
    prepared.PreparedCorpus(bad).verify(checksums=True)


@pytest.mark.parametrize("fault", ["deleted", "cut", "overwritten"])
def test_a_damaged_shard_is_named_in_one_line(prepared_dir, tmp_path, fault):
  def damage(directory, meta):
    name = meta["shards"][0]["rows" if fault == "overwritten" else "chunks"]
    path = os.path.join(directory, name)
    if fault == "deleted":
      os.remove(path)
    elif fault == "cut":
      size = os.path.getsize(path)
      with open(path, "r+b") as f:
        f.truncate(size // 2)
    else:  # same size, other content
      rows = np.load(path)
      np.save(path, rows[::-1].copy())
  bad = _damaged_copy(prepared_dir, tmp_path / "c", damage)
  expected = {"deleted": r"chunks-00000-of-00001.array_record: missing \(prepared.json lists it\)",
              "cut": r"chunks-00000-of-00001.array_record: \d+ bytes, prepared.json says \d+ "
                     r"\(cut short or overwritten\)",
              "overwritten": r"rows-00000-of-00001.npy: its SHA-256 differs"}[fault]
  with pytest.raises(ValueError, match=expected):
    prepared.PreparedCorpus(bad).verify(checksums=True)


def test_training_on_a_damaged_corpus_fails_before_compiling(prepared_dir, tmp_path):
  def cut(directory, meta):
    with open(os.path.join(directory, meta["shards"][0]["chunks"]), "r+b") as f:
      f.truncate(100)
  bad = _damaged_copy(prepared_dir, tmp_path / "c", cut)
  rc, stderr, seconds = _main(str(tmp_path / "run"), *PRETRAIN,
                              f"--config.data.source=prepared:{bad}")
  _assert_one_line_error(rc, stderr, seconds,
                         starts=f"{bad}/chunks-00000-of-00001.array_record: 100 bytes")


def test_prepare_refuses_a_non_empty_out_and_an_existing_corpus_in_one_line(prepared_dir, corpus,
                                                                            tmp_path):
  busy = tmp_path / "busy"
  busy.mkdir()
  (busy / "notes.txt").write_text("mine")
  (busy / "chunks-00000-of-00002.array_record").write_text("stale")
  before = _snapshot(str(busy))
  with pytest.raises(ValueError, match=r"--out .*busy: not empty \(chunks-00000-of-00002."
                                       r"array_record, notes.txt\) and no finished corpus"):
    prepare.prepare(f"jsonl:{corpus}", str(busy), settings.pretrain_input(_pretrain_config("")), num_workers=1)
  assert _snapshot(str(busy)) == before
  before = _snapshot(prepared_dir)
  rc, stderr, seconds = _timed([sys.executable, "-m", "retromae_jax.tools.prepare",
                                f"--source=jsonl:{corpus}", f"--out={prepared_dir}",
                                "--config=configs/base.py:smoke"])
  _assert_one_line_error(rc, stderr, seconds, starts=f"--out {prepared_dir}: already holds a "
                         "prepared corpus of this --source, finished")
  assert _snapshot(prepared_dir) == before


class _SerialPool:
  """The worker pool run in this process, one shard after the other; `interrupt_after` shards
  done, it raises as a killed prepare would stop (the shards it finished stay finished)."""

  def __init__(self, *args, interrupt_after=None, **kwargs):
    del args, kwargs
    self.interrupt_after = interrupt_after

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False

  def map(self, fn, tasks):
    results = []
    for task in tasks:
      if len(results) == self.interrupt_after:
        raise KeyboardInterrupt("killed")
      results.append(fn(task))
    return results


def test_an_interrupted_prepare_resumes_shard_by_shard(corpus, tmp_path, monkeypatch, caplog):
  caplog.set_level("INFO")
  config = _pretrain_config("")
  source = f"jsonl:{corpus}"
  monkeypatch.setattr(prepare.concurrent.futures, "ProcessPoolExecutor", _SerialPool)
  reference = prepare.prepare(source, str(tmp_path / "ref"), settings.pretrain_input(config), num_workers=2)

  out = str(tmp_path / "out")
  monkeypatch.setattr(prepare.concurrent.futures, "ProcessPoolExecutor",
                      lambda *a, **k: _SerialPool(interrupt_after=1))
  with pytest.raises(KeyboardInterrupt):
    prepare.prepare(source, out, settings.pretrain_input(config), num_workers=2)
  first_shard = os.path.join(out, "chunks-00000-of-00002.array_record")
  written = os.stat(first_shard).st_mtime_ns
  other = _pretrain_config("")
  other.data.max_seq_length = 128
  with pytest.raises(ValueError, match=r"--out .*out: holds an interrupted prepare of other "
                                       r"settings \(max_seq_length: 64 -> 128\)"):
    prepare.prepare(source, out, settings.pretrain_input(other), num_workers=2)

  meta = prepare.prepare(source, out, settings.pretrain_input(config), num_workers=2)  # one shard left: in-process
  assert "shards [0] finished, 1 to do" in caplog.text
  assert os.stat(first_shard).st_mtime_ns == written  # kept, not redone
  strip = lambda m: {k: v for k, v in m.items() if k != "seconds"}
  assert strip(meta) == strip(reference)
  assert _snapshot(out) == {**_snapshot(str(tmp_path / "ref")),
                            prepared.META: _snapshot(out)[prepared.META]}
  assert not any(n.startswith(("done-", "preparing")) for n in os.listdir(out))


def _children(pid):
  try:
    with open(f"/proc/{pid}/task/{pid}/children", encoding="utf-8") as f:
      return [int(p) for p in f.read().split()]
  except FileNotFoundError:
    return []


def _alive(pid):
  try:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
      return f.read().split(")")[-1].split()[0] != "Z"
  except FileNotFoundError:
    return False


def test_prepare_workers_die_with_a_killed_prepare(tmp_path):
  big = tmp_path / "big.jsonl"
  from texts import DOCS  # noqa: E402
  big.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS * 3000))
  proc = subprocess.Popen([sys.executable, "-m", "retromae_jax.tools.prepare",
                           f"--source=jsonl:{big}", f"--out={tmp_path / 'out'}",
                           "--config=configs/base.py:smoke", "--num_workers=2"],
                          cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 120
  workers = []
  while time.monotonic() < deadline and not os.path.exists(tmp_path / "out" / (
      "chunks-00000-of-00002.array_record.tmp")):
    time.sleep(0.05)
  workers = [p for p in _children(proc.pid)]
  assert len(workers) >= 2, workers  # the pool's two workers (and its resource tracker)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  deadline = time.monotonic() + 10
  while any(map(_alive, workers)) and time.monotonic() < deadline:
    time.sleep(0.1)
  assert not any(map(_alive, workers)), [p for p in workers if _alive(p)]


# ------------------------------------------------------------------------------ Fine-tuning data


def _data(train, **more):
  config = finetune_config.get_config("smoke")
  config.data.train = train
  for key, value in more.items():
    setattr(config.data, key, value)
  return settings.pairs_data(config)


def _pairs(path, lines):
  path.write_text("".join(json.dumps(line) + "\n" for line in lines))
  return f"jsonl:{path}"


GOOD = {"query": "how to sort a list", "pos": ["list.sort sorts in place"], "neg": ["a", "b", "c"]}


def test_empty_queries_and_lines_without_a_positive_stop_the_run_past_the_threshold(tmp_path):
  lines = [GOOD] * 96 + [{**GOOD, "query": ""}, {"query": "q", "neg": ["x"]},
                         {"query": "q", "pos": []}, {"query": "q", "pos": ["  "]}]
  train = _pairs(tmp_path / "p.jsonl", lines)
  with pytest.raises(ValueError) as e:
    pairs_checks.check(_data(train, group_size=2))
  message = str(e.value)
  assert message.startswith(f"data.train {train}: 4 of 100 lines unusable (4.0%): empty query 1 "
                            f"({tmp_path}/p.jsonl:97); no positive 3 ({tmp_path}/p.jsonl:98, "
                            f"{tmp_path}/p.jsonl:99, {tmp_path}/p.jsonl:100)"), message
  assert "data.max_unusable_fraction=0.01" in message
  pairs_checks.check(_data(train, group_size=2, max_unusable_fraction=0.05))  # a warning only


def test_a_group_size_beyond_the_negatives_available_is_refused(tmp_path):
  train = _pairs(tmp_path / "p.jsonl", [GOOD] * 10)  # 3 negatives per line
  pairs_checks.check(_data(train, group_size=4))
  with pytest.raises(ValueError, match=r"10 of 10 usable lines have fewer than data.group_size - "
                                       r"1 = 7 negatives \(the most any line has: 3;.*set "
                                       r"--config.data.group_size=4"):
    pairs_checks.check(_data(train, group_size=8))


def test_hard_negatives_matching_few_queries_are_refused(tmp_path):
  queries = {f"q{i}": f"question number {i}" for i in range(301)}
  corpus = {f"d{i}": f"document number {i}" for i in range(301)}
  beir.write(str(tmp_path / "b"), corpus, queries, {"train": {q: {f"d{i}": 1}
                                                              for i, q in enumerate(queries)}})
  mined = tmp_path / "mined.jsonl"
  _pairs(mined, [{"query": "question number 0", "pos": ["document number 0"],
                  "neg": ["document number 1"]}])
  with pytest.raises(ValueError, match=rf"config.data.hard_negatives {mined}: matches 1 of the "
                                       r"301 queries .* \(0%\), fewer than "
                                       r"data.min_hard_negatives_coverage=0.5"):
    pairs_checks.check(_data(f"beir:{tmp_path / 'b'}", hard_negatives=str(mined), group_size=1))


def test_weighted_sources_are_each_checked():
  assert pairs_checks.split_sources("jsonl:a@2,beir:DIR@1,pydoc") == ["jsonl:a", "beir:DIR",
                                                                        "pydoc"]


def test_bad_fine_tuning_data_fails_before_compiling(tmp_path):
  train = _pairs(tmp_path / "p.jsonl", [GOOD] * 20 + [{**GOOD, "query": ""}] * 2)
  before = _snapshot(str(tmp_path))
  rc, stderr, seconds = _main(str(tmp_path / "run"), "--config=configs/finetune.py:smoke",
                              f"--config.data.train={train}", "--config.eval.data=")
  _assert_one_line_error(rc, stderr, seconds, starts=f"data.train {train}: 2 of 22 lines unusable")
  assert {k: v for k, v in _snapshot(str(tmp_path)).items() if not k.startswith("run/")} == before


# ------------------------------------------------------------------------------ HF directories


def _write_safetensors(path, shapes):
  header, offset = {}, 0
  for name, shape in shapes.items():
    size = int(np.prod(shape)) * 4
    header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
    offset += size
  head = json.dumps(header).encode()
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(head)) + head + b"\0" * offset)


def test_an_hf_directory_whose_shapes_disagree_with_its_config_is_named(tmp_path):
  config = {"model_type": "bert", "vocab_size": 100, "hidden_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 32,
            "type_vocab_size": 2}
  (tmp_path / "config.json").write_text(json.dumps(config))
  shapes = {"bert.embeddings.word_embeddings.weight": (100, 8),
            "bert.embeddings.position_embeddings.weight": (32, 8),
            "bert.encoder.layer.0.intermediate.dense.weight": (16, 8)}
  _write_safetensors(tmp_path / "model.safetensors", shapes)
  preflight.check_hf_dir(str(tmp_path), tokenizer=False)  # consistent: passes
  with pytest.raises(ValueError, match=r"default.*30522 tokens, more than the model's vocab_size "
                                       r"100 \(.*config.json\)"):
    preflight.check_vocabulary(str(tmp_path), "default")
  _write_safetensors(tmp_path / "model.safetensors",
                     {**shapes, "bert.embeddings.word_embeddings.weight": (120, 8)})
  with pytest.raises(ValueError, match=r"model.safetensors: bert.embeddings.word_embeddings.weight "
                                       r"has shape \(120, 8\), .*config.json says vocab_size=100, "
                                       r"hidden_size=8 \(100, 8\)"):
    preflight.check_hf_dir(str(tmp_path), tokenizer=False)
  _write_safetensors(tmp_path / "model.safetensors",
                     {**shapes, "bert.encoder.layer.1.output.dense.weight": (8, 16)})
  with pytest.raises(ValueError, match=r"the weights hold 2 encoder layers, .*config.json says "
                                       r"num_hidden_layers=1"):
    preflight.check_hf_dir(str(tmp_path), tokenizer=False)


# ------------------------------------------------------------------------------ Tools


@pytest.fixture(scope="module")
def tool_inputs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("tools")
  (tmp / "latin1.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
  (tmp / "empty.jsonl").write_text("")
  beir.write(str(tmp / "beir"), {"d1": "a document"}, {"q1": "a query"},
             {"test": {"q1": {"d1": 1}}})
  os.remove(tmp / "beir" / "queries.jsonl")
  return tmp


def _tool(name, *args):
  return _timed([sys.executable, "-m", f"retromae_jax.tools.{name}", *args])


@pytest.mark.parametrize("case", ["non_utf8", "missing_model", "empty_input", "beir_no_queries"])
def test_tools_speak_in_one_line(tool_inputs, case):
  tmp = tool_inputs
  model = f"--model={tmp}/no_such_model"
  if case == "non_utf8":  # the input is read before the model
    run = _tool("encode", model, f"--input={tmp}/latin1.jsonl", f"--output={tmp}/x.npy")
    expected = f"{tmp}/latin1.jsonl:2: not UTF-8 (byte b'\\xe9' at column 14)"
  elif case == "missing_model":
    (tmp / "ok.jsonl").write_text('{"text": "ok"}\n')
    run = _tool("encode", model, f"--input={tmp}/ok.jsonl", f"--output={tmp}/x.npy")
    expected = f"--model: {tmp}/no_such_model does not exist"
  elif case == "empty_input":
    run = _tool("encode", model, f"--input={tmp}/empty.jsonl", f"--output={tmp}/x.npy")
    expected = f"{tmp}/empty.jsonl: no line to embed"
  else:
    run = _tool("evaluate", model, f"--beir_dir={tmp}/beir")
    expected = f"{tmp}/beir/queries.jsonl: no such file"
  rc, stderr, _ = run
  assert rc == 1 and "Traceback" not in stderr, stderr[-3000:]
  assert _last_line(stderr).startswith(expected), _last_line(stderr)
  assert not os.path.exists(tmp / "x.npy")


def test_a_bug_in_a_tool_keeps_its_traceback():
  script = ("from retromae_jax.tools import cli\n"
            "def main(argv):\n  raise KeyError('a bug')\n"
            "cli.run(main)\n")
  rc, stderr, _ = _timed([sys.executable, "-c", script])
  assert rc == 1 and "Traceback" in stderr and "KeyError: 'a bug'" in stderr
  script = script.replace("KeyError('a bug')", "ValueError('x.jsonl:3: expected a string')")
  rc, stderr, _ = _timed([sys.executable, "-c", script])
  assert (rc, stderr) == (1, "x.jsonl:3: expected a string\n")
