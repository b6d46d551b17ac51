"""tools/compile.py: the training step compiled for a TPU topology by libtpu, on this CPU.

What a compiler report must show, checked against what is known without it: the analytic FLOPs
(trainers/flops.py, hand-derived matmul counts) within 10%; the parameter bytes per chip of a
pure data-parallel mesh are the whole model's, an FSDP mesh over 4 chips holds a quarter; pure
data parallelism communicates by all-reduce alone (the gradients), FSDP gathers parameters and
reduce-scatters gradients; a step larger than the chip's HBM exits 1 with one line on stderr.
The compiling tests are skipped where libtpu (requirements-tpu.txt) is not installed.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                reason="libtpu not installed (pip install -r requirements-tpu.txt)")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = ["--config=configs/base.py:smoke", "--topology=v5e:2x2"]


def _env():
  # The TPU compiler at its normal optimisation level (conftest turns the CPU backend's off).
  flags = os.environ.get("XLA_FLAGS", "").replace("--xla_backend_optimization_level=0", "")
  return {**os.environ, "XLA_FLAGS": flags.strip()}


def _compile(*args, module="retromae_jax.tools.compile"):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=_env(),
                        capture_output=True, text=True, timeout=900)


# 4,096 rows x 64 tokens per chip: far more activation memory than a v5e's 16 GiB.
TOO_BIG = "batch_size=16384"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """One program run (each costs a start-up and compiles): the smoke config on v5e:2x2 as
  configured (pure data parallelism), with FSDP, and with a batch that cannot fit."""
  out = tmp_path_factory.mktemp("compile") / "report.json"
  proc = _compile(*SMOKE, "--sweep=mesh.fsdp=4", f"--sweep={TOO_BIG}", f"--json={out}")
  assert out.exists(), proc.stderr[-4000:]
  return proc, json.loads(out.read_text())


@pytest.fixture(scope="module")
def reports(run):
  """(result, {variant: report}) of the variants that fit."""
  proc, result = run
  assert "| as configured |" in proc.stdout and "| mesh.fsdp=4 |" in proc.stdout
  fitting = {r["variant"]: r for r in result["reports"] if r["variant"] != TOO_BIG}
  return result, fitting


@needs_libtpu
def test_memory_fields_are_positive_and_fsdp_splits_the_state(reports):
  result, by_name = reports
  assert (result["chips"], result["device_kind"]) == (4, "TPU v5 lite")
  dp, fsdp = by_name["as configured"], by_name["mesh.fsdp=4"]
  for report in (dp, fsdp):
    memory = report["bytes_per_chip"]
    for key in ("parameters", "optimizer_state", "batch", "arguments", "temporaries", "peak"):
      assert memory[key] > 0, (key, memory)
    assert memory["peak"] >= memory["arguments"] >= memory["parameters"] + memory["batch"]
    assert report["fits"] and 0 < report["headroom"] < 1
  # Adam's two moments per parameter (f32 both): twice the parameters' bytes, plus a counter.
  assert dp["bytes_per_chip"]["optimizer_state"] == pytest.approx(
      2 * dp["bytes_per_chip"]["parameters"], rel=1e-3)
  # FSDP over 4 chips: a quarter of the state per chip, but for the vectors whose axis the
  # rules do not put on fsdp (biases of heads and MLP, LayerNorms): about 2% of this model.
  assert fsdp["bytes_per_chip"]["parameters"] == pytest.approx(
      dp["bytes_per_chip"]["parameters"] / 4, rel=0.05)


@needs_libtpu
def test_compiled_flops_match_the_analytic_count(reports):
  for report in reports[1].values():
    # The program's matmul count (its jaxpr) against trainers/flops.py's hand-derived formula.
    assert report["flops_ratio"] == pytest.approx(1.0, abs=0.10), report["flops_ratio"]
    # The compiler's own count against the program's: a third, independent count. The smoke
    # step's loops (the chunked loss's blocks: one at 64 tokens) run once, so counting their
    # bodies once misses nothing here; libtpu also counts element-wise work (a few percent).
    assert report["compiler_flops_per_chip"] == pytest.approx(
        report["program_flops_per_chip"], rel=0.10)
    assert report["roofline_s"]["bound"] > 0 and 0 < report["mfu_bound"] <= 1


def test_program_flops_count_every_trip_of_a_scan_and_the_recomputation():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from retromae_jax.tools import compile_report  # pylint: disable=g-import-not-at-top

  def loss(w, x):
    def layer(h, _):
      return jnp.tanh(h @ w), None
    h, _ = jax.lax.scan(jax.checkpoint(layer), x, None, length=5)
    return jnp.sum(h @ w.T)

  closed = jax.make_jaxpr(jax.grad(loss))(jnp.ones((8, 8)), jnp.ones((4, 8)))
  one = 2 * 4 * 8 * 8  # a [4, 8] x [8, 8] product
  # Per scan trip: forward, its recomputation (checkpoint), and two products backward (dh, dw);
  # after the scan: the head forward and its two backward products.
  assert compile_report.jaxpr_matmul_flops(closed.jaxpr) == (5 * 4 * one + 3 * one, 0)


@needs_libtpu
def test_collectives_of_data_parallel_and_fsdp_meshes(reports):
  dp, fsdp = reports[1]["as configured"], reports[1]["mesh.fsdp=4"]
  assert set(dp["collectives"]) == {"all-reduce"}
  # The gradients' all-reduce moves about every parameter once (f32 on every chip).
  assert dp["collectives"]["all-reduce"]["bytes"] >= dp["bytes_per_chip"]["parameters"]
  assert fsdp["collectives"]["all-gather"]["count"] > 0
  assert fsdp["collectives"]["reduce-scatter"]["count"] > 0


@needs_libtpu
def test_a_step_that_does_not_fit_exits_with_one_line(run):
  proc, result = run
  (too_big,) = [r for r in result["reports"] if r["variant"] == TOO_BIG]
  assert not too_big["fits"] and too_big["headroom"] < 0
  assert too_big["bytes_per_chip"]["peak"] > too_big["hbm_bytes"]
  assert proc.returncode == 1
  last = proc.stderr.rstrip("\n").splitlines()[-1]
  assert last.startswith(f"config.batch_size: does not fit ({TOO_BIG}): "), last
  assert "Traceback" not in proc.stderr
  assert f"| {TOO_BIG} |" in proc.stdout  # the report still comes first


def test_missing_libtpu_is_one_line(monkeypatch):
  # In-process (the program's import alone costs half a minute): tools/compile.py's main()
  # prints a ValueError's message as its one stderr line and exits 1 (as the next test shows).
  from retromae_jax.trainers import chips  # pylint: disable=g-import-not-at-top
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "libtpu" else real_find_spec(name, *a))
  with pytest.raises(ValueError) as error:
    chips.topology_devices("v5e:2x2", 1)
  assert str(error.value) == ("--topology: the TPU compiler (libtpu) is not installed: "
                              "pip install -r requirements-tpu.txt")


@needs_libtpu
def test_a_slice_smaller_than_a_host_is_described_and_a_refused_one_is_one_line():
  from retromae_jax.trainers import chips  # pylint: disable=g-import-not-at-top
  chip, topology, devices = chips.topology_devices("v5e-1", 1)  # one chip: its own host bounds
  assert (chip.name, topology, len(devices)) == ("v5e", "v5e:1x1", 1)
  assert len(chips.topology_devices("v5e-8", 1)[2]) == 8
  with pytest.raises(ValueError, match=r"^--topology: libtpu cannot describe v5e:3x3 \(.+\)$"):
    chips.topology_devices("v5e:3x3", 1)


def test_topology_names():
  from retromae_jax.trainers import chips  # pylint: disable=g-import-not-at-top
  assert chips.parse_topology("v5e-8")[1] == "v5e:2x4"
  assert chips.parse_topology("v5e:4x4")[1] == "v5e:4x4"
  assert chips.parse_topology("v4-32")[1] == "v4:2x2x4"  # 32 TensorCores, 16 chips
  assert chips.parse_topology("v5p-8")[1] == "v5p:2x2x1"
  with pytest.raises(ValueError, match=r"^--topology: .*got 'v7-8'$"):
    chips.parse_topology("v7-8")


def test_fit_finds_the_fastest_setting_that_fits_with_few_compiles(monkeypatch):
  """--fit bisects the knob's settings (fastest first); here a stand-in for the compiler: the
  peak falls as the microbatches grow, and only 8 or more fit."""
  import types  # pylint: disable=g-import-not-at-top
  from retromae_jax.tools import compile_report  # pylint: disable=g-import-not-at-top

  compiled = []

  def analyse(step, setting, chip, model_cfg, num_chips):
    del step, chip, model_cfg, num_chips
    compiled.append(setting)
    peak = 64 * 2**30 / setting
    return {"setting": setting, "fits": peak <= 10 * 2**30, "bytes_per_chip": {"peak": peak}}

  monkeypatch.setattr(compile_report, "analyse", analyse)
  step = types.SimpleNamespace(settings=(1, 2, 4, 8, 16, 32), describe=str)
  assert compile_report.fit(step, None, None, 8)["setting"] == 8
  assert len(compiled) <= 4 and compiled[0] == 32  # the leanest first: does anything fit?
  compiled.clear()
  step = types.SimpleNamespace(settings=(1, 2, 4), describe=str)
  with pytest.raises(compile_report.DoesNotFit) as refused:
    compile_report.fit(step, None, None, 8)
  assert refused.value.args[0]["setting"] == 4 and compiled == [4]


def test_an_anchored_step_is_reported_with_its_frozen_copy():
  """The anti-forgetting term's step (config.anchor) also reads the frozen starting encoder:
  the report reads its compiled program like any other, and its arguments hold that copy.
  Compiled for this CPU (the report's arithmetic does not need a TPU)."""
  import jax  # pylint: disable=g-import-not-at-top
  from configs.base import get_config  # pylint: disable=g-import-not-at-top
  from retromae_jax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from retromae_jax.tools import compile_report  # pylint: disable=g-import-not-at-top
  from retromae_jax.trainers import chips, loop, pretrain  # pylint: disable=g-import-not-at-top

  reports = {}
  for weight in (0.0, 1.0):
    config = get_config("smoke")
    config.anchor.weight, config.batch_size = weight, 4
    tokenizer = tokenizer_lib.load_tokenizer(config.tokenizer)
    mesh, rules = loop.make_mesh(config, jax.devices()[:1])
    model_cfg = loop.resolve_model_config(config, tokenizer.get_vocab_size())
    step = pretrain.build_step(config, model_cfg, mesh, rules)
    assert step.anchored == (weight > 0)
    reports[weight] = compile_report.analyse(step, step.setting, chips.parse_topology("v5e-4")[0],
                                             model_cfg, 1)
    encoder_bytes = compile_report.per_chip_bytes(step.state.params["bert"],
                                                  step.state_shardings.params["bert"])
  plain, anchored = (reports[w]["bytes_per_chip"] for w in (0.0, 1.0))
  assert anchored["parameters"] == plain["parameters"]
  assert anchored["arguments"] - plain["arguments"] == pytest.approx(encoder_bytes, rel=0.01)
