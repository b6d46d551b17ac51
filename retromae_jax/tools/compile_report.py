"""What a TPU compiler says about a compiled training step (tools/compile.py): per-chip bytes
against the chip's HBM, compiled FLOPs against the analytic count, bytes accessed, the
collectives of the HLO and the roofline bound on the step time; the search for the leanest
knob setting that fits (--fit) and the report as a Markdown table.

The step is a trainers/step.Step; the chip a trainers/chips.Chip. Nothing here runs the step.
"""

import math
import re

from absl import logging
import jax
from jax.extend import core as jax_core
import numpy as np

GiB = 2**30
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
                "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
                "f8e4m3fn": 1, "f8e5m2": 1}
_ARRAY = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")
_OP = re.compile(r" = (.*?) (" + "|".join(COLLECTIVES) + r")(-start)?\(")
# TPU's compiler fuses a gradient reduce-scatter with its producers: a fusion that calls a
# computation named all-reduce-scatter.N.
_OUT_OF_MEMORY = re.compile(r"RESOURCE_EXHAUSTED: Ran out of memory.*required for HLO "
                            r"temporaries \(([0-9.]+)G\)")
_FUSED_REDUCE_SCATTER = re.compile(r" = (.*?) fusion\(.*calls=%all-reduce-scatter")


class DoesNotFit(Exception):
  pass


def per_chip_bytes(tree, shardings) -> int:
  """Bytes of the largest shard of each leaf, summed: what one chip holds of `tree`."""
  total = 0
  for leaf, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
    total += int(np.prod(s.shard_shape(leaf.shape))) * np.dtype(leaf.dtype).itemsize
  return total


def _array_bytes(text: str) -> list[int]:
  return [int(np.prod([int(d) for d in dims.split(",") if d] or [1])) * _DTYPE_BYTES.get(t, 4)
          for t, dims in _ARRAY.findall(text)]


def collectives(hlo: str) -> dict:
  """kind -> {count, bytes}: each collective of the compiled HLO (async ones counted at their
  start, TPU's fused reduce-scatters as reduce-scatters) and the bytes of its results on one
  chip. Counted as written: an op inside a loop body (microbatches, the gradient cache) counts
  once, not once per iteration."""
  out = {}
  for line in hlo.splitlines():
    if match := _OP.search(line):
      shape, kind, start = match.groups()
    elif match := _FUSED_REDUCE_SCATTER.search(line):
      shape, kind, start = match.group(1), "reduce-scatter", None
    else:
      continue
    sizes = _array_bytes(shape)
    if start and kind in ("all-gather", "collective-permute", "all-to-all") and len(sizes) > 1:
      sizes = sizes[len(sizes) // 2:]  # (operands, results): the results
    entry = out.setdefault(kind, {"count": 0, "bytes": 0})
    entry["count"] += 1
    entry["bytes"] += sum(sizes)
  return out


def jaxpr_matmul_flops(jaxpr) -> tuple[float, int]:
  """(matmul FLOPs, while loops of unknown trip count) of a jaxpr: 2 per multiply-add of every
  dot_general, a scan's body times its length, the largest branch of a cond, nested calls
  (jit, custom VJPs, checkpoints: recomputation counted) once. A while loop's body is counted
  once (its trips are not known before it runs)."""
  total, unknown = 0.0, 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract)
      continue
    subs = []
    for value in eqn.params.values():
      for v in (value if isinstance(value, (tuple, list)) else (value,)):
        if isinstance(v, jax_core.ClosedJaxpr):
          subs.append(v.jaxpr)
        elif isinstance(v, jax_core.Jaxpr):
          subs.append(v)
    counts = [jaxpr_matmul_flops(sub) for sub in subs]
    unknown += sum(u for _, u in counts) + (eqn.primitive.name == "while")
    if eqn.primitive.name == "cond":
      total += max((f for f, _ in counts), default=0.0)
    else:
      total += sum(f for f, _ in counts) * eqn.params.get("length", 1)
  return total, unknown


def program_matmul_flops(step, setting) -> tuple[float, int]:
  """jaxpr_matmul_flops of the whole update step (forward, backward, recomputation, every
  microbatch and layer), traced as compiled: the FLOPs the chips compute together, counted from
  the program itself where the compiler's cost analysis counts a loop's body once."""
  return jaxpr_matmul_flops(step.jaxpr(setting).jaxpr)


def analyse(step, setting, chip, model_cfg, num_chips: int, hlo_file: str = "") -> dict:
  """The compiler's report of `step` with its knob at `setting`, per chip."""
  params = per_chip_bytes(step.state.params, step.state_shardings.params)
  opt_state = per_chip_bytes(step.state.opt_state, step.state_shardings.opt_state)
  batch = per_chip_bytes(step.batch, step.batch_sharding)
  try:
    compiled, _ = step.compile(setting)
  except jax.errors.JaxRuntimeError as e:
    # libtpu refuses a program whose temporaries exceed the chip's HBM (less what it reserves):
    # its message has the bytes the program would need.
    needed = _OUT_OF_MEMORY.search(str(e))
    if not needed:
      raise
    temporaries = float(needed.group(1)) * GiB
    peak = params + opt_state + batch + temporaries
    return {"setting": {step.knob: setting, "describe": step.describe(setting)},
            "model": _model_fields(model_cfg),
            "bytes_per_chip": {"parameters": params, "optimizer_state": opt_state,
                               "batch": batch, "temporaries": temporaries, "peak": peak},
            "hbm_bytes": chip.hbm_bytes, "headroom": 1.0 - peak / chip.hbm_bytes, "fits": False,
            "compiler": str(e).splitlines()[0]}
  if hlo_file:
    with open(hlo_file, "w", encoding="utf-8") as f:
      f.write(compiled.as_text())
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # Arguments (state + batch) live through the step; the donated state's outputs reuse its
  # buffers (alias), the rest of the outputs (metrics) are new.
  peak = (memory.argument_size_in_bytes + memory.temp_size_in_bytes
          + memory.output_size_in_bytes - memory.alias_size_in_bytes)
  # The cost analysis counts the body of a loop once where the compiler keeps the loop (the
  # layers' scan, microbatches, the chunked loss's blocks, the gradient cache): its FLOPs and
  # bytes are then a lower bound. The program's own matmul count (program_matmul_flops) has
  # every trip, so it is what is compared with the analytic count and bounds the step time.
  flops = float(cost.get("flops", 0.0))
  bytes_accessed = float(cost.get("bytes accessed", 0.0))
  program, unknown_loops = program_matmul_flops(step, setting)
  program /= num_chips
  analytic = step.model_flops / num_chips
  hlo = compiled.as_text()
  loops = hlo.count(" while(")
  t_flops, t_bytes = program / chip.peak_bf16_flops, bytes_accessed / chip.hbm_bytes_per_s
  bound = max(t_flops, t_bytes)
  return {
      "setting": {step.knob: setting, "describe": step.describe(setting)},
      "model": _model_fields(model_cfg),
      "bytes_per_chip": {"parameters": params, "optimizer_state": opt_state, "batch": batch,
                         "arguments": memory.argument_size_in_bytes,
                         "temporaries": memory.temp_size_in_bytes,
                         "outputs": memory.output_size_in_bytes,
                         "aliased": memory.alias_size_in_bytes,
                         "code": memory.generated_code_size_in_bytes, "peak": peak},
      "hbm_bytes": chip.hbm_bytes,
      "headroom": 1.0 - peak / chip.hbm_bytes,
      "fits": peak <= chip.hbm_bytes,
      "compiler_flops_per_chip": flops,
      "compiler_counts_loops_once": bool(loops),
      "program_flops_per_chip": program,
      "program_while_loops_counted_once": unknown_loops,
      "analytic_flops_per_chip": analytic,
      "flops_ratio": program / analytic if analytic else None,
      "bytes_accessed_per_chip": bytes_accessed,
      "while_loops": loops,
      "collectives": collectives(hlo),
      "roofline_s": {"flops": t_flops, "hbm": t_bytes, "bound": bound,
                     "limited_by": "flops" if t_flops >= t_bytes else "hbm"},
      "mfu_bound": (analytic / chip.peak_bf16_flops) / bound if bound else None,
  }


def _model_fields(model_cfg) -> dict:
  return {"dtype": str(model_cfg.dtype), "param_dtype": str(model_cfg.param_dtype),
          "remat": model_cfg.remat, "vocab_size": model_cfg.vocab_size,
          "vocab_loss": model_cfg.vocab_loss}


def fit(step, chip, model_cfg, num_chips):
  """The first of step.settings (fastest first) whose step fits, by bisection (memory falls
  along the list); its report, or raises DoesNotFit with the leanest one's."""
  settings = list(step.settings)
  reports = {}

  def report(i):
    if i not in reports:
      reports[i] = analyse(step, settings[i], chip, model_cfg, num_chips)
      logging.warning("%s: %.2f GiB per chip (%s)", step.describe(settings[i]),
                      reports[i]["bytes_per_chip"]["peak"] / GiB,
                      "fits" if reports[i]["fits"] else "does not fit")
    return reports[i]

  lo, hi = 0, len(settings) - 1
  if not report(hi)["fits"]:
    raise DoesNotFit(reports[hi])
  while lo < hi:
    mid = (lo + hi) // 2
    if report(mid)["fits"]:
      hi = mid
    else:
      lo = mid + 1
  return report(lo)


def gib(x):
  return f"{x / GiB:.2f}"


def table(rows: list[tuple[str, dict]]) -> str:
  """The reports as a Markdown table, one row each."""
  head = ("variant", "setting", "params GiB", "opt GiB", "batch GiB", "temp GiB", "peak GiB",
          "HBM GiB", "headroom", "TFLOP/chip (program)", "program / analytic",
          "TFLOP/chip (compiler)", "GB accessed", "collectives", "bound ms", "limited by",
          "MFU bound")
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, r in rows:
    b = r["bytes_per_chip"]
    cells = [name, r["setting"]["describe"], gib(b["parameters"]), gib(b["optimizer_state"]),
             gib(b["batch"]), gib(b["temporaries"]), gib(b["peak"]), gib(r["hbm_bytes"]),
             f"{r['headroom']:.0%}"]
    if "program_flops_per_chip" not in r:  # refused by the compiler: out of memory
      lines.append("| " + " | ".join(cells + ["-"] * 8) + " |")
      continue
    coll = ", ".join(f"{k} {v['count']}x {v['bytes'] / 2**20:.0f} MiB"
                     for k, v in sorted(r["collectives"].items())) or "none"
    once = " (loops once)" if r["compiler_counts_loops_once"] else ""
    cells += [f"{r['program_flops_per_chip'] / 1e12:.2f}",
              f"{r['flops_ratio']:.3f}" if r["flops_ratio"] else "-",
              f"{r['compiler_flops_per_chip'] / 1e12:.2f}{once}",
              f"{r['bytes_accessed_per_chip'] / 1e9:.1f}{once}", coll,
              f"{r['roofline_s']['bound'] * 1e3:.1f}", r["roofline_s"]["limited_by"],
              f"{r['mfu_bound']:.0%}" if r["mfu_bound"] else "-"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)
