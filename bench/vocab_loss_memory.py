"""The compiled pretraining step's memory with model.vocab_loss=plain and =chunked, on this CPU.

  python bench/vocab_loss_memory.py --config=configs/base.py:minilm [--config.KEY=VALUE ...]

Builds the step main runs (tools/compile.build_step over this machine's one CPU device, float32)
for each loss and prints XLA:CPU's memory analysis (arguments, temporaries) as JSON lines. The
TPU figures come from `python -m retromae_jax.tools.compile ... --sweep=model.vocab_loss=plain`.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import logging  # noqa: E402
import jax  # noqa: E402

# Its flags (--config, ...) are this program's: the same config handling as the tool's.
from retromae_jax.tools import compile as compile_tool  # noqa: E402


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  for loss in ("plain", "chunked"):
    config = compile_tool._CONFIG.value.copy_and_resolve_references()  # pylint: disable=protected-access
    with config.unlocked():
      config.model.vocab_loss = loss
      config.model.dtype = "float32"
      config.mesh.data = 1
    step, model_cfg = compile_tool.build_step(config, jax.devices()[:1])
    compiled, _ = step.compile(step.setting)
    memory = compiled.memory_analysis()
    print(json.dumps({
        "vocab_loss": loss, "batch_size": config.batch_size,
        "seq_len": config.data.max_seq_length, "vocab_size": model_cfg.vocab_size,
        "hidden_size": model_cfg.hidden_size, "num_layers": model_cfg.num_layers,
        "argument_mib": memory.argument_size_in_bytes / 2**20,
        "temp_mib": memory.temp_size_in_bytes / 2**20}), flush=True)
  sys.stdout.flush()


if __name__ == "__main__":
  app.run(main)
