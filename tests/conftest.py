"""Test-session settings shared by every test and every program the tests start.

XLA's backend optimisations (fusion, layout and loop passes of the CPU compiler) are turned off:
most tests start short training runs whose time goes into compiling, not running, the step, and
level 0 compiles about 3x faster (a smoke run takes 25% less CPU). The programs compute the same
functions; comparisons between two runs (meshes, resume, processes) are made under the same
setting, and comparisons with outside references (NumPy, PyTorch) have float tolerances.
Compiled programs are cached on disk across the session's processes (see below).
"""

import json
import os
import tempfile

import pytest

# Every program the tests start compiles nearly the same smoke-sized steps: a persistent
# compilation cache shared by the session's processes (JAX's own, keyed by the program, the jax
# version and the XLA flags) compiles each once. Set before jax is imported, by this process and
# inherited by its children.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "retromae_jax_tests_jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

# CPU only: with the TPU compiler installed (requirements-tpu.txt, for tools/compile.py), jax
# would also try to start a TPU backend and print libtpu's warnings on every program's stderr.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

_FAST_COMPILE = "--xla_backend_optimization_level=0"
if _FAST_COMPILE not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """40 real documents (standard library docstrings) in a jsonl file, with two bad lines."""
  from retromae_jax.data import sources
  path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
  lines = [json.dumps({"text": t}) for t in sources.pydoc_texts()[:40]]
  lines[5:5] = ["{broken json", json.dumps({"title": "no text"})]
  path.write_text("\n".join(lines) + "\n")
  return str(path)
