#!/usr/bin/env bash
# Submits RetroMAE pretraining to SLURM GPU nodes: builds the sbatch command for
# launch/slurm_gpu.sbatch (which holds the per-node logic). See usage() below.
set -euo pipefail

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly BATCH_SCRIPT="$REPO_ROOT/launch/slurm_gpu.sbatch"

usage() {
  cat <<EOF
Usage: $PROG --workdir=DIR [OPTIONS] [--config.KEY=VALUE ...] [-- MAIN_FLAGS...]

Submits python -m retromae_jax.main to SLURM as one JAX process per node, each driving all of its
node's GPUs (see launch/slurm_gpu.sbatch for why). In the job, every task gets
JAX_COORDINATOR_ADDRESS (the first node, port 61440 + job id % 4096 unless --port),
JAX_NUM_PROCESSES (= SLURM_NTASKS = nodes) and JAX_PROCESS_ID (= its SLURM_PROCID).
The job runs in the repository root and logs to <job name>-<job id>.out there.

Options:
  --nodes=N              nodes, one process each (default 1)
  --gpus_per_node=G      GPUs per node (default 8)
  --partition=P          SLURM partition (default: the cluster's)
  --time=T               time limit, e.g. 24:00:00 or 2-00:00:00 (default: the partition's).
                         SLURM sends SIGTERM 5 minutes before it: the run saves and exits 0,
                         and submitting the same command again resumes it.
  --account=A            SLURM account to charge
  --job_name=NAME        default retromae
  --cpus_per_task=C      CPUs of each process (default: all of its node's)
  --port=P               coordinator port (default: derived from the job id)
  --python=PATH          interpreter on the nodes (default: python)
  --workdir=DIR          required: a directory every node sees (shared filesystem or gs://)
  --config=FILE[:PRESET] default configs/base.py:base
  --data_dir=DIR         TFDS data_dir (same as --config.data.data_dir=DIR)
  --config.KEY=VALUE     passed to the program as is (any number)
  --dry-run              print the sbatch command, the srun line and each task's command line
                         (FIRST_NODE, PORT, CPUS_ON_NODE stand for values known once the job
                         starts); submit nothing
  --help                 this message

Example:
  $PROG --nodes=4 --gpus_per_node=8 --partition=gpu --time=48:00:00 \\
      --workdir=/shared/runs/retromae_base --config.data.source='jsonl:/shared/data/*.jsonl'
EOF
}

# ---------------------------------------------------------------------------------------------
# Arguments (each option's name is the name of its variable)
# ---------------------------------------------------------------------------------------------
nodes=1
gpus_per_node=8
partition=
time=
account=
job_name=retromae
cpus_per_task=
port=
python=python
workdir=
config=configs/base.py:base
data_dir=
dry_run=0
main_flags=() # --config.* and everything after --, passed to retromae_jax.main as is

no_positional() {
  die "unexpected argument '$1' (flags for the program go after --, or as --config.KEY=VALUE)"
}

parse_args() {
  parse_options "nodes gpus_per_node partition time account job_name cpus_per_task port python workdir config data_dir" "help dry_run" no_positional "$@"
  validate_args
}

validate_args() {
  local option
  for option in nodes gpus_per_node; do
    is_positive_int "${!option}" || die "--$option must be a whole number >= 1, got '${!option}'"
  done
  if [[ -n $cpus_per_task ]] && ! is_positive_int "$cpus_per_task"; then
    die "--cpus_per_task must be a whole number >= 1, got '$cpus_per_task'"
  fi
  if [[ -n $port ]] && ! { is_positive_int "$port" && ((port <= 65535)); }; then
    die "--port must be in 1..65535, got '$port'"
  fi
  # SLURM's forms: MINUTES, MINUTES:SECONDS, HOURS:MINUTES:SECONDS, DAYS-HOURS[:MINUTES[:SECONDS]].
  if [[ -n $time && ! $time =~ ^([0-9]+-)?[0-9]+(:[0-9]+){0,2}$ ]]; then
    die "--time '$time' is not a SLURM time limit (e.g. 90, 24:00:00, 2-00:00:00)"
  fi
  [[ -n $workdir ]] ||
    die "--workdir=DIR is required: a directory every node sees (shared filesystem or gs://)"
}

# ---------------------------------------------------------------------------------------------
# The submission
# ---------------------------------------------------------------------------------------------
main() {
  parse_args "$@"

  local sbatch_cmd=(sbatch "--job-name=$job_name" "--nodes=$nodes" --ntasks-per-node=1
    "--gpus-per-node=$gpus_per_node")
  [[ -z $partition ]] || sbatch_cmd+=("--partition=$partition")
  [[ -z $time ]] || sbatch_cmd+=("--time=$time")
  [[ -z $account ]] || sbatch_cmd+=("--account=$account")
  [[ -z $cpus_per_task ]] || sbatch_cmd+=("--cpus-per-task=$cpus_per_task")
  sbatch_cmd+=("--chdir=$REPO_ROOT")
  # The batch script reads these from its environment; ALL keeps the rest of ours (PATH, a venv).
  local export_list=ALL
  [[ -z $port ]] || export_list+=",JAX_COORDINATOR_PORT=$port"
  [[ $python == python ]] || export_list+=",PYTHON=$python"
  [[ $export_list == ALL ]] || sbatch_cmd+=("--export=$export_list")

  local main_args=("--config=$config" "--workdir=$workdir")
  [[ -z $data_dir ]] || main_args+=("--config.data.data_dir=$data_dir")
  main_args+=("${main_flags[@]}")
  sbatch_cmd+=("$BATCH_SCRIPT" "${main_args[@]}")

  if ((dry_run)); then
    shell_join "${sbatch_cmd[@]}"
    echo "# FIRST_NODE, PORT, CPUS_ON_NODE: values the job learns when it starts"
    # The batch script prints its own srun and per-task lines, so they cannot drift from what it
    # runs; the values an allocation would give it are placeholders or from the options above.
    RETROMAE_DRY_RUN=1 \
      SLURM_NTASKS=$nodes \
      SLURM_CPUS_ON_NODE=CPUS_ON_NODE \
      SLURM_CPUS_PER_TASK=$cpus_per_task \
      JAX_COORDINATOR_PORT=${port:-PORT} \
      PYTHON=$python \
      bash "$BATCH_SCRIPT" "${main_args[@]}"
    return 0
  fi

  command -v sbatch >/dev/null || die "sbatch not found: run this on a SLURM login node"
  printf '+ %s\n' "$(shell_join "${sbatch_cmd[@]}")" >&2
  "${sbatch_cmd[@]}"
}

main "$@"
