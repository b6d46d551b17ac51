"""Retrieval evaluation during training, for both programs (config.eval).

Pretraining and fine-tuning score the encoder they are training on a BEIR split every
eval.every_steps steps and at the last step (and, with eval.at_start, before the first step):
`eval/<measure>` rows in metrics.jsonl and one log line. Pretraining sees whether its encoder gets
better for retrieval while it pretrains; fine-tuning also keeps its best step (on_result), and
stops early when on_result returns True (`stop`, read by trainers/loop.py after each evaluation).
"""


from absl import logging

from retromae_jax.data import source_spec
from retromae_jax.data.evalsets import beir
from retromae_jax.evaluators import retrieval


def beir_dir(spec: str) -> str:
  """A BEIR folder from eval.data / data.train: 'pydoc' (built on first use), DIR or beir:DIR."""
  folder = source_spec.beir_folder(spec)
  if folder is None:
    from retromae_jax.data.evalsets import pydoc_set  # builds the set on first use
    return pydoc_set.cached_dir()
  return folder


class RetrievalEvaluator:
  """evaluator(step, params) scores `params` (the encoder under 'bert') on the eval split."""

  def __init__(self, data: beir.BeirData, model_cfg, tokenizer, writer, *, every_steps: int,
               total_steps: int, measures: tuple, embed_kwargs: dict, on_result=None):
    self.data, self.model_cfg, self.tokenizer, self.writer = data, model_cfg, tokenizer, writer
    self.every_steps, self.total_steps = every_steps, total_steps
    self.measures, self.embed_kwargs, self.on_result = measures, embed_kwargs, on_result
    self.stop = False  # set when on_result asks the run to stop (early stopping)

  def due(self, step: int) -> bool:
    return bool(self.every_steps and step % self.every_steps == 0) or step == self.total_steps

  def __call__(self, step: int, params) -> dict:
    """Scores the params (every process takes part; all get the same result) and logs it."""
    result = retrieval.evaluate_params(self.model_cfg, {"bert": params["bert"]}, self.tokenizer,
                                       self.data, measures=self.measures, **self.embed_kwargs)
    self.writer.write(step, {f"eval/{k}": v for k, v in result.items()
                             if k in self.measures or k.startswith("dim")})
    truncated = [k for k in result if k.startswith("dim") and k.endswith("/" + self.measures[0])]
    logging.info("eval step %d: %s (%.0f s)", step,
                 " | ".join(f"{k} {result[k]:.4f}" for k in (*self.measures, *truncated)),
                 result["encode_seconds"] + result["search_seconds"])
    if self.on_result is not None and self.on_result(step, params, result):
      self.stop = True
    return result
