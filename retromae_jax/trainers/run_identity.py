"""What makes a run that run, and the check that a resume is the same run.

A workdir's checkpoints record the settings below (checkpoint meta 'run': the values as the user
gave them, before an initial model fixes the shape). A run that finds checkpoints in its workdir
compares its own settings with the latest checkpoint's before anything is compiled or written: a
difference stops it with one line naming each key, its old and its new value. Every other key
(total_steps, logging and checkpoint cadence, evaluation, the mesh, the microbatching, ...) may
change on resume (docs/reliability.md). `--config.resume.allow_changes=key1,key2` lets a guarded
key change on purpose (a section name, e.g. `data`, allows all of its keys); the change is
logged.
"""

import json

from absl import logging

# Dotted config keys (a section stands for all of its keys). Keys a config lacks are left out:
# one list serves pretraining and fine-tuning. data.source / data.train are recorded as the raw
# strings, with their weights ("jsonl:a@2,beir:DIR@1").
GUARDED = (
    "task", "seed", "batch_size", "tokenizer",
    # pretraining input
    "data.source", "data.data_dir", "data.max_seq_length", "data.min_chunk_tokens",
    "data.encoder_mask_ratio", "data.decoder_mask_ratio", "data.decoder_pool_size", "data.pack",
    # fine-tuning input
    "data.train", "data.split", "data.hard_negatives", "data.group_size", "data.query_max_len",
    "data.passage_max_len", "data.query_instruction", "data.passage_instruction",
    # objective
    "objective", "decoder", "encoder",
    "model.pooling", "model.similarity", "model.temperature",
    # model shape
    "model.vocab_size", "model.vocab_multiple", "model.num_layers", "model.hidden_size",
    "model.num_heads", "model.intermediate_size", "model.max_position_embeddings",
    "model.type_vocab_size", "model.family", "model.pad_token_id", "model.sentence_vector",
    "model.query_stream",
    # initial model
    "init.hf_dir", "init.checkpoint", "init.decoder_dir", "init.model",
)


def _flat(config, prefix: str = "") -> dict:
  out = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if hasattr(value, "items"):
      out.update(_flat(value, name + "."))
    else:
      out[name] = value
  return out


def _covered(key: str, entries) -> bool:
  return any(key == e or key.startswith(e + ".") for e in entries)


def of(config) -> dict:
  """{dotted key: value} of the guarded settings of `config` (JSON values)."""
  # Through JSON: the values compare as they will read back from a checkpoint's meta.
  return json.loads(json.dumps(
      {k: v for k, v in sorted(_flat(config).items()) if _covered(k, GUARDED)}))


def allowed_changes(config) -> tuple[str, ...]:
  resume = config.get("resume")
  text = resume.get("allow_changes", "") if resume is not None else ""
  return tuple(k.strip() for k in text.split(",") if k.strip())


def differences(old: dict, new: dict) -> dict:
  """{key: (old, new)} of the keys whose values differ (a key only one side has counts)."""
  missing = object()
  keys = sorted(set(old) | set(new))
  diffs = {k: (old.get(k, missing), new.get(k, missing)) for k in keys
           if old.get(k, missing) != new.get(k, missing)}
  return {k: tuple("(absent)" if v is missing else v for v in pair) for k, pair in diffs.items()}


def check_resume(config, recorded: dict | None, step_dir: str) -> None:
  """Raises ValueError naming every guarded key whose value differs between the run that wrote
  `step_dir` (`recorded`, its meta's 'run') and `config`, unless resume.allow_changes names it
  (then logs it). `recorded` None: a checkpoint from before run identities, not compared."""
  if recorded is None:
    logging.warning("%s: the checkpoint records no run identity (an older version wrote it); "
                    "resuming without comparing the settings", step_dir)
    return
  allowed = allowed_changes(config)
  unknown = [k for k in allowed if not _covered(k, GUARDED) and
             not any(g.startswith(k + ".") for g in GUARDED)]
  if unknown:
    raise ValueError(f"config.resume.allow_changes: {unknown} are not guarded keys (any other key "
                     "may change on resume as it is; see docs/reliability.md)")
  diffs = differences(recorded, of(config))
  for key in [k for k in diffs if _covered(k, allowed)]:
    logging.warning("Resume: %s changed on purpose (config.resume.allow_changes): %r -> %r", key,
                    *diffs.pop(key))
  if diffs:
    shown = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in diffs.items())
    raise ValueError(
        f"{step_dir}: this workdir holds another run ({shown}); use another --workdir, or "
        f"--config.resume.allow_changes={','.join(diffs)} to change them on purpose")
