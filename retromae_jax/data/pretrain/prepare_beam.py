"""Runs the shard tasks of data/pretrain/prepare.py on Apache Beam: a corpus that outgrows one machine.

  python -m retromae_jax.tools.prepare --source=SOURCE --out=DIR --engine=beam --num_workers=N \
      -- --runner=DirectRunner --direct_num_workers=2 --direct_running_mode=multi_processing
  (at scale: -- --runner=DataflowRunner --project=P --region=R --temp_location=gs://...
   or Spark / Flink runners; everything after `--` is Beam's pipeline options)

Beam distributes the N shard tasks (one `prepare_shard` call each: shard w reads the documents
process w of N would read, chunks them and writes chunks-w-of-N.array_record and its document
index) over its workers and retries a failed one. The statistics come back through files under
DIR/beam/ (removed after); the driver then numbers the documents and writes prepared.json as the
local engine does, so the output is the same whichever engine wrote it. DIR must be a directory
every worker writes to (NFS, Filestore or a GCS FUSE mount): the ArrayRecord writer writes local
paths.

`apache-beam` is an optional dependency (requirements-beam.txt), imported only here.
"""

import dataclasses
import glob
import json
import os
import shutil


def _prepare_indexed(fields: dict, prepare_shard, task_type) -> str:
  return json.dumps([fields["index"], prepare_shard(task_type(**fields))])


def run_shards(tasks: list, pipeline_args: list[str], prepare_shard) -> list[dict]:
  """prepare_shard(task) over `tasks` (prepare.py's, passed in: this module is its engine, not
  its caller) as one Beam pipeline; returns their results in task order."""
  try:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
  except ImportError as e:
    raise ValueError("--engine=beam needs Apache Beam: pip install -r requirements-beam.txt") from e
  results_dir = os.path.join(tasks[0].out, "beam")
  os.makedirs(results_dir, exist_ok=True)
  prefix = os.path.join(results_dir, "shard_results")
  with beam.Pipeline(options=PipelineOptions(pipeline_args)) as pipeline:
    _ = (pipeline
         # Plain dicts travel to the workers; the function and the task's class go by reference.
         | "ShardTasks" >> beam.Create([dataclasses.asdict(task) for task in tasks])
         # One task per worker bundle: without it a runner may fuse all tasks into one bundle.
         | "Spread" >> beam.Reshuffle()
         | "PrepareShard" >> beam.Map(_prepare_indexed, prepare_shard, type(tasks[0]))
         | "ShardResults" >> beam.io.WriteToText(prefix, file_name_suffix=".jsonl"))
  results = {}
  for path in glob.glob(prefix + "*.jsonl"):
    with open(path, encoding="utf-8") as f:
      results.update((index, shard) for index, shard in map(json.loads, f))
  missing = sorted({task.index for task in tasks} - set(results))
  if missing:
    raise RuntimeError(f"{results_dir}: Beam finished without the results of shards {missing}")
  shutil.rmtree(results_dir)  # the output directory holds the same files whichever engine ran
  return [results[task.index] for task in tasks]
