"""The model card (README.md) of a fine-tuning run's sentence-transformers export.

sentence-transformers' style: YAML metadata first (base_model, datasets, library_name,
pipeline_tag, tags with one `loss:<Name>` per loss term, model-index with the evaluation of the
exported step), then a description, usage with the saved prompts, the training recipe and the
run's evaluation rows as written to metrics.jsonl (eval/<measure>, eval/dim<d>/<measure>).
Metric names follow sentence-transformers' InformationRetrievalEvaluator: `cosine_ndcg@10`
(`dot_...` for dot similarity), `dim_128_cosine_ndcg@10` for Matryoshka sizes.
"""

import json
import os

import yaml


def eval_rows(metrics_path: str) -> list[dict]:
  """The rows of metrics.jsonl that hold evaluations: {'step', 'eval/...': value}."""
  if not os.path.isfile(metrics_path):
    return []
  with open(metrics_path, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [{k: v for k, v in r.items() if k == "step" or k.startswith("eval/")}
          for r in rows if any(k.startswith("eval/") for k in r)]


def metric_name(key: str, similarity: str) -> str:
  """'eval/ndcg@10' -> 'cosine_ndcg@10'; 'eval/dim128/ndcg@10' -> 'dim_128_cosine_ndcg@10'."""
  key = key.removeprefix("eval/")
  prefix = ""
  if key.startswith("dim"):
    dim, _, key = key.partition("/")
    prefix = f"dim_{dim[3:]}_"
  return f"{prefix}{similarity}_{key}"


def losses(spec) -> list[str]:
  """The sentence-transformers names of the loss terms (tags `loss:<Name>`)."""
  names = ["MultipleNegativesRankingLoss"]  # in-batch softmax cross-entropy (scale = 1/temp)
  if spec.kd_weight:
    names.append("DistillKLDivLoss")
  if spec.matryoshka_dims:
    names.insert(0, "MatryoshkaLoss")
  return names


def render(*, base_model: str, train_data: list[str], spec, steps: int, eval_data: str,
           rows: list[dict], prompts: dict, max_seq_length: int, exported_step: int) -> str:
  """The README.md text; `rows` the run's evaluation rows (eval_rows)."""
  similarity = spec.similarity
  exported = [r for r in rows if r["step"] == exported_step]
  metadata = {
      "base_model": base_model or None,
      "datasets": list(train_data),
      "library_name": "sentence-transformers",
      "pipeline_tag": "sentence-similarity",
      "tags": ["sentence-transformers", "sentence-similarity", "feature-extraction",
               "retromae_jax", *[f"loss:{n}" for n in losses(spec)]],
  }
  if exported and eval_data:
    metadata["model-index"] = [{
        "name": f"{base_model or 'encoder'} fine-tuned with retromae_jax",
        "results": [{
            "task": {"type": "information-retrieval", "name": "Information Retrieval"},
            "dataset": {"name": eval_data, "type": eval_data},
            "metrics": [{"type": metric_name(k, similarity), "value": v,
                         "name": metric_name(k, similarity)}
                        for k, v in exported[-1].items() if k != "step"],
        }],
    }]
  lines = ["---", yaml.safe_dump(metadata, sort_keys=False).rstrip(), "---", "",
           "# Sentence embedding model fine-tuned with retromae_jax", "",
           f"Fine-tuned from `{base_model or 'a random initialisation'}` for {steps} steps "
           "(contrastive, the BGE / FlagEmbedding recipe).", "",
           "## Usage", "", "```python", "from sentence_transformers import SentenceTransformer",
           "", "model = SentenceTransformer(PATH_TO_THIS_FOLDER)"]
  if prompts.get("query"):
    lines += ["queries = model.encode(texts, prompt_name=\"query\")  # adds the training "
              "instruction", "documents = model.encode(documents, prompt_name=\"passage\")"]
  else:
    lines += ["vectors = model.encode(texts)"]
  if spec.matryoshka_dims:
    dims = ", ".join(str(d) for d in spec.matryoshka_dims)
    lines += [f"# Matryoshka: trained to be truncated to {dims} dimensions, e.g.",
              f"small = SentenceTransformer(PATH_TO_THIS_FOLDER, truncate_dim={min(spec.matryoshka_dims)})"]
  lines += ["```", "", "## Training", "",
            f"- Data: {', '.join(f'`{t}`' for t in train_data)}",
            f"- Similarity: {similarity}, temperature {spec.temperature:g}; pooling: "
            f"{spec.pooling}; maximum sequence length {max_seq_length}",
            f"- Losses: {', '.join(losses(spec))}"]
  if spec.kd_weight:
    lines.append(f"- Distillation: FlagEmbedding's kl_div term, weight {spec.kd_weight:g}, "
                 f"teacher temperature {spec.kd_temperature:g}")
  if spec.matryoshka_dims:
    weights = spec.matryoshka_weights or (1.0,) * len(spec.matryoshka_dims)
    lines.append("- Matryoshka dimensions: " + ", ".join(
        f"{d} (weight {w:g})" for d, w in zip(spec.matryoshka_dims, weights)))
  for name, text in prompts.items():
    if text:
      lines.append(f"- Prompt `{name}`: {json.dumps(text)}")
  if rows:
    keys = [k for k in rows[-1] if k != "step"]
    lines += ["", f"## Evaluation ({eval_data}, this run's metrics.jsonl)", "",
              f"The exported model is step {exported_step}.", "",
              "| step | " + " | ".join(metric_name(k, similarity) for k in keys) + " |",
              "|---" * (len(keys) + 1) + "|"]
    lines += ["| " + " | ".join([str(r["step"])] + [repr(r.get(k, "")) for k in keys]) + " |"
              for r in rows]
  return "\n".join(lines) + "\n"
