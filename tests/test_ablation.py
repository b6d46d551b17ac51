"""bench/ablation.py's statistics and report, on synthetic runs (no training)."""

import importlib.util
import json
import os

import numpy as np
import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def _bench_module(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(BENCH, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


ablation = _bench_module("ablation")


def test_bootstrap_pairs_the_difference_over_the_same_queries():
  rng = np.random.default_rng(1)
  base = rng.uniform(0, 1, 300)  # query difficulty dominates the per-query spread
  out = ablation.bootstrap({"mlm": base, "better": base + 0.01, "same": base.copy()}, "mlm",
                           samples=500)
  # Unpaired, each mean is uncertain by far more than 0.01 ...
  assert out["mlm"]["hi"] - out["mlm"]["lo"] > 0.05
  assert out["mlm"]["lo"] < base.mean() < out["mlm"]["hi"]
  # ... but paired, a uniform +0.01 is exactly +0.01 on every resample.
  assert out["better"]["diff"] == pytest.approx(0.01)
  assert out["better"]["diff_lo"] == pytest.approx(0.01)
  assert out["better"]["diff_hi"] == pytest.approx(0.01)
  assert out["better"]["p_le_0"] == 0.0
  assert out["same"]["diff_lo"] == out["same"]["diff_hi"] == 0.0
  assert out["same"]["p_le_0"] == 1.0
  assert "diff" not in out["mlm"]


def test_bootstrap_difference_interval_covers_zero_for_pure_noise():
  rng = np.random.default_rng(2)
  a, b = rng.uniform(0, 1, 400), rng.uniform(0, 1, 400)
  out = ablation.bootstrap({"mlm": a, "other": b}, "mlm", samples=1000)["other"]
  assert out["diff_lo"] < out["diff"] < out["diff_hi"]
  assert out["diff_hi"] - out["diff_lo"] > 0.05  # independent noise: a wide interval
  assert 0.0 < out["p_le_0"] < 1.0


def test_loss_curve_keeps_the_last_of_a_repeated_step(tmp_path):
  rows = [{"step": 10, "loss": 5.0, "enc_loss": 3.0, "dec_loss": 2.0},
          {"step": 20, "loss": 4.0, "enc_loss": 2.5, "dec_loss": 1.5},
          {"step": 20, "loss": 3.9, "enc_loss": 2.4, "dec_loss": 1.5},  # resumed run
          {"step": 20, "eval/x": 1.0}]  # not a training row
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  curve = ablation.loss_curve(str(tmp_path))
  assert curve == {"step": [10, 20], "enc_loss": [3.0, 2.4], "dec_loss": [2.0, 1.5]}
  assert ablation.loss_curve(str(tmp_path / "missing")) == {"step": []}


def _fake_run(root, name, shift, rng_seed, curve=True):
  """A finished run on disk: exported encoders, cached evaluations, metrics.jsonl."""
  rng = np.random.default_rng(rng_seed)
  for sub in ("pretrain", "finetune"):
    d = os.path.join(root, name, sub, "export", "encoder")
    os.makedirs(d)
    open(os.path.join(d, "config.json"), "w").close()
  base = np.clip(np.linspace(0, 1, 50) + rng.normal(0, 0.05, 50), 0, 1)
  for kind, bonus in (("zeroshot", 0.0), ("finetuned", 0.2)):
    per_query = np.clip(base * 0.5 + shift + bonus, 0, 1)
    result = {m: float(per_query.mean()) for m in ablation.MEASURES}
    result.update(num_queries=50, num_docs=500, seconds=1.0, query_ids=[str(i) for i in range(50)],
                  per_query_ndcg10=per_query.tolist())
    with open(os.path.join(root, name, f"eval_{kind}.json"), "w") as f:
      json.dump(result, f)
  if curve:
    with open(os.path.join(root, name, "pretrain", "metrics.jsonl"), "w") as f:
      for step in (10, 20, 30):
        f.write(json.dumps({"step": step, "loss": 9.0 / step, "enc_loss": 5.0 / step,
                            "dec_loss": 4.0 / step}) + "\n")


def test_report_only_writes_table_json_and_plot(tmp_path):
  pytest.importorskip("matplotlib")
  work, out = tmp_path / "work", tmp_path / "out"
  _fake_run(str(work), "none", 0.0, 0, curve=False)
  _fake_run(str(work), "mlm", 0.10, 0)
  _fake_run(str(work), "retromae", 0.15, 0)  # same queries' noise: +0.05 everywhere (clipped)
  # The training invocation, as a real (non --report_only) run logs it.
  (work / "invocations.jsonl").write_text(json.dumps(
      {"command": "python bench/ablation.py --preset=small", "started": "2026-01-01T00:00:00Z",
       "seconds": 1800.0}) + "\n")
  ablation.main(["--objectives=none,mlm,retromae", f"--workdir={work}", f"--out={out}",
                 "--report_only", "--bootstrap_samples=200"])
  results = json.loads((out / "results.json").read_text())
  assert list(results["runs"]) == ["none", "mlm", "retromae"]
  boot = results["bootstrap"]["finetuned"]
  assert boot["retromae"]["diff"] > 0.03 and boot["retromae"]["diff_lo"] > 0
  assert boot["none"]["diff"] < 0 and boot["none"]["diff_hi"] < 0
  assert results["meta"]["num_queries"] == 50
  assert "query_ids" not in results["runs"]["mlm"]["finetuned"]
  table = (out / "results.md").read_text()
  rows = [line for line in table.splitlines() if line.startswith("| ")][1:]  # no header
  assert [r.split("|")[1].strip() for r in rows] == ["none", "mlm", "**retromae**"]
  mlm_row = rows[1].split("|")
  assert mlm_row[4].strip() == "-"  # the baseline has no difference to itself
  assert rows[2].split("|")[4].strip().startswith("+0.0")
  assert rows[2].split("|")[6].strip().startswith("+0.0")  # zero-shot difference
  assert "Command: `python bench/ablation.py --preset=small`" in table
  assert "Wall time: 30.0 min" in table  # the training invocation's, not the report's
  assert "Leakage note" in table  # pydoc pretraining scored on the pydoc set
  png = (out / "ablation.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_unknown_objective_is_refused(tmp_path):
  with pytest.raises(SystemExit, match="unknown"):
    ablation.main(["--objectives=mlm,nope", f"--workdir={tmp_path}", f"--out={tmp_path}",
                   "--report_only"])


def test_bm25_arm_scores_per_query_by_hand_and_stays_out_of_the_signal_correlation():
  from retromae_jax.data.evalsets import beir
  bm25_baseline = _bench_module("bm25_baseline")
  corpus = {"ls": "list directory contents of the current folder",
            "cp": "copy files and directories to another place",
            "tar": "an archiving utility storing many files in one archive"}
  queries = {"q1": "directory listing contents", "q2": "archive utility",
             "q3": "zebra"}  # q3 shares no term with any document: nothing retrieved
  qrels = {"q1": {"ls": 1}, "q2": {"tar": 1}, "q3": {"cp": 1}}
  data = beir.BeirData(corpus, queries, qrels)
  run = bm25_baseline.search(data)
  assert run["q3"] == {} and max(run["q1"], key=run["q1"].get) == "ls"
  out = ablation.score_run(data, run, 0.0)
  # Each answerable query's one relevant document is ranked first: nDCG@10 1; q3's is 0.
  assert out["query_ids"] == ["q1", "q2", "q3"]
  assert out["per_query_ndcg10"] == [1.0, 1.0, 0.0]
  assert out["ndcg@10"] == pytest.approx(2 / 3)

  domain = _bench_module("domain_adaptation")
  assert domain.parse_arm("bm25") == ("bm25", "")
  with pytest.raises(SystemExit):
    domain.parse_arm("bm25:mean")
  arm = lambda kind, signal, labeled: {"kind": kind, "signal": {"ndcg@10": signal},
                                       "zeroshot": {"ndcg@10": labeled}}
  runs = {"a:mean": arm("start", 0.5, 0.7), "b:mean": arm("selfsup", 0.6, 0.8),
          "c:cls": arm("start", 0.4, 0.6), "bm25": arm("bm25", 0.9, 0.1)}
  corr = domain.rank_correlation(runs)
  assert corr["arms"] == ["a:mean", "b:mean", "c:cls"] and corr["spearman"] == pytest.approx(1.0)


def test_an_arm_starts_from_another_arms_finished_identical_stages(tmp_path):
  domain = _bench_module("domain_adaptation")
  cfg = {"workdir": str(tmp_path)}
  assert domain._finished_elsewhere("retromae+warmup+selfsup", "mean", 0, cfg) is None
  done = tmp_path / "retromae_warmup_mean" / "pretrain" / "export" / "encoder"
  done.mkdir(parents=True)
  (done / "config.json").write_text("{}")
  # Same first stage (RetroMAE with the warm-up, mean): reused; another pooling or another
  # first stage (no warm-up) is another run.
  assert domain._finished_elsewhere("retromae+warmup+selfsup", "mean", 0, cfg) == str(
      tmp_path / "retromae_warmup_mean" / "pretrain")
  assert domain._finished_elsewhere("retromae+warmup+selfsup", "cls", 0, cfg) is None
  assert domain._finished_elsewhere("retromae", "mean", 0, cfg) is None
  assert domain._finished_elsewhere("retromae+warmup+selfsup", "mean", 1, cfg) is None


def test_seeds_pool_per_query_before_pairing():
  seeds = _bench_module("domain_seeds")
  rng = np.random.default_rng(0)
  base = rng.uniform(0, 1, 50)

  def run(shift):  # arm a = arm b + shift on every query; query order differs between arms
    ids = [f"q{i}" for i in range(50)]
    return {"runs": {"a": {"finetuned": {"query_ids": ids[::-1],
                                         "per_query_ndcg10": list((base + shift)[::-1])}},
                     "b": {"finetuned": {"query_ids": ids, "per_query_ndcg10": list(base)}}}}

  out = seeds.compare([run(0.01), run(0.03), {"runs": {}}], "a", "b", "finetuned", samples=200)
  assert [s["diff"] for s in out["per_seed"][:2]] == pytest.approx([0.01, 0.03])
  assert out["per_seed"][2] is None  # a run without the arms is skipped, not a zero
  # Pooled: each query's mean over the two seeds, then paired: exactly +0.02 on every resample.
  pooled = out["pooled"]
  assert pooled["seeds"] == 2
  assert (pooled["diff"], pooled["diff_lo"], pooled["diff_hi"]) == pytest.approx((0.02,) * 3)
  assert pooled["p_le_0"] == 0.0
