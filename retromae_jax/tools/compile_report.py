"""What a TPU compiler says about a compiled training step (tools/compile.py): per-chip bytes
against the chip's HBM, compiled FLOPs against the analytic count, bytes accessed, the
collectives of the HLO and the roofline bound on the step time; the search for the leanest
knob setting that fits (--fit) and the report as a Markdown table.

The step is a trainers/step.Step; the chip a trainers/chips.Chip. Nothing here runs the step.
"""

import re

from absl import logging
import jax
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
  # The cost analysis counts the body of the microbatch loop once: scaled by its trips (exact
  # up to the optimizer's element-wise update, which runs once). The gradient cache's loops
  # (chunks of queries and of passages, two lengths) are left as counted: an undercount.
  trips = setting if step.knob == "accum_steps" else 1
  flops = float(cost.get("flops", 0.0)) * trips
  bytes_accessed = float(cost.get("bytes accessed", 0.0)) * trips
  analytic = step.model_flops / num_chips
  hlo = compiled.as_text()
  loops = hlo.count(" while(")
  # The cost analysis does not always multiply a while loop's body by its trips (seen: layers
  # under model.remat count about once): where the compiled count is below the analytic one,
  # the roofline takes the analytic count, a floor on what the chip must compute.
  roofline_flops = max(flops, analytic)
  t_flops, t_bytes = roofline_flops / chip.peak_bf16_flops, bytes_accessed / chip.hbm_bytes_per_s
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
      "flops_per_chip": flops,
      "flops_undercounted": bool(loops) and flops < 0.9 * analytic,
      "loop_note": (f"microbatch loop: cost analysis x {trips}" if trips > 1 else
                    "gradient-cache loops counted once: FLOPs and bytes undercount"
                    if step.knob == "chunk_size" and setting else ""),
      "analytic_flops_per_chip": analytic,
      "flops_ratio": flops / analytic if analytic else None,
      "bytes_accessed_per_chip": bytes_accessed,
      "while_loops": loops,
      "collectives": collectives(hlo),
      "roofline_s": {"flops": t_flops, "hbm": t_bytes, "bound": bound,
                     "flops_used": roofline_flops,
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
          "HBM GiB", "headroom", "TFLOP/chip", "vs analytic", "GB accessed", "collectives",
          "bound ms", "limited by", "MFU bound")
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, r in rows:
    b = r["bytes_per_chip"]
    if "flops_per_chip" not in r:  # refused by the compiler: out of memory
      cells = (name, r["setting"]["describe"], gib(b["parameters"]), gib(b["optimizer_state"]),
               gib(b["batch"]), gib(b["temporaries"]), gib(b["peak"]), gib(r["hbm_bytes"]),
               f"{r['headroom']:.0%}", *["-"] * 7)
      lines.append("| " + " | ".join(cells) + " |")
      continue
    coll = ", ".join(f"{k} {v['count']}x {v['bytes'] / 2**20:.0f} MiB"
                     for k, v in sorted(r["collectives"].items())) or "none"
    ratio = f"{r['flops_ratio']:.3f}" if r["flops_ratio"] else "-"
    ratio += " (loops counted once)" if r.get("flops_undercounted") else ""
    mfu = f"{r['mfu_bound']:.0%}" if r["mfu_bound"] else "-"
    lines.append("| " + " | ".join((
        name, r["setting"]["describe"], gib(b["parameters"]), gib(b["optimizer_state"]),
        gib(b["batch"]), gib(b["temporaries"]), gib(b["peak"]), gib(r["hbm_bytes"]),
        f"{r['headroom']:.0%}", f"{r['flops_per_chip'] / 1e12:.2f}", ratio,
        f"{r['bytes_accessed_per_chip'] / 1e9:.1f}", coll,
        f"{r['roofline_s']['bound'] * 1e3:.1f}", r["roofline_s"]["limited_by"], mfu)) + " |")
  return "\n".join(lines)


