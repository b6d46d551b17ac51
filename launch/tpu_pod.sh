#!/usr/bin/env bash
# RetroMAE pretraining on a Cloud TPU VM slice (one host or a multi-host pod slice), driven from
# your workstation with gcloud. See usage() below.
set -euo pipefail

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# On every worker, relative to the login user's home directory.
readonly REMOTE_REPO=retromae_jax    # a symlink to retromae_jax-<commit>, the copied tree
readonly REMOTE_VENV=retromae_venv   # the virtual environment `setup` builds
readonly REMOTE_LOG=retromae_run.log # `run --detach` writes the program's output here

usage() {
  cat <<EOF
Usage: $PROG SUBCOMMAND --zone=ZONE [OPTIONS] [--config.KEY=VALUE ...] [-- MAIN_FLAGS...]

Creates a Cloud TPU VM slice and runs RetroMAE pretraining on every host of it. In order:
  create   the TPU VM (with --queued: a queued resource, which waits for capacity)
  copy     ship a commit of this repository to all workers: \`git archive\` of --commit
           (default HEAD) is copied with scp and unpacked to ~/$REMOTE_REPO-<commit>, and
           ~/$REMOTE_REPO points at it. Committed files only: uncommitted edits are not copied
           (commit first). Earlier copies stay, so a relative workdir is never deleted.
  setup    on all workers: a Python (--python_version, default 3.12; TPU VM images ship 3.10,
           too old for jax) virtual environment ~/$REMOTE_VENV made with uv, with
           ~/$REMOTE_REPO/requirements.txt and jax[tpu] installed. Run copy first.
  run      on all workers: python -m retromae_jax.main --config=CONFIG --workdir=WORKDIR plus
           --config.* flags and whatever follows --. With no JAX_* variables set the program's
           jax.distributed.initialize() finds the other hosts itself. Restarting the same run
           resumes from WORKDIR's latest checkpoint.
  stop     stop the TPU VM (single-host VMs; a queued resource can only be deleted)
  delete   delete the TPU VM (with --queued: the queued resource and its VM)

Options:
  --zone=ZONE               required, e.g. us-central2-b (v4), us-west4-a (v5e)
  --project=PROJECT         default: gcloud's configured project
  --name=NAME               TPU VM / queued resource name (default: retromae)
  --accelerator_type=TYPE   v4-32 (default), v5litepod-16, v5p-32, v6e-16, ...: what create
                            makes, and how run knows the slice spans several hosts (more than 8
                            in the suffix), so pass the same value to run
  --runtime_version=V       TPU software version; default by family: v6e v2-alpha-tpuv6e,
                            v5p v2-alpha-tpuv5, v5litepod v2-alpha-tpuv5-lite,
                            v2/v3/v4 tpu-ubuntu2204-base
  --queued                  create/delete a queued resource instead of a TPU VM
  --spot                    create: spot (preemptible) capacity; run resumes after preemption
  --commit=REV              copy: the commit to ship (default HEAD)
  --python_version=X.Y      setup: Python of the virtual environment (default 3.12)
  --config=FILE[:PRESET]    run: the config (default configs/base.py:base)
  --workdir=gs://B/PATH     run: checkpoints, metrics and the export. A multi-host slice needs a
                            gs:// path (every host writes the same checkpoint, and each host's
                            disk is its own); a local path is refused there.
  --bucket=BUCKET           run: with no --workdir, use gs://BUCKET/retromae/NAME
  --data_dir=gs://B/tfds    run: the TFDS data_dir (same as --config.data.data_dir=...)
  --config.KEY=VALUE        run: passed to the program as is (any number)
  --detach                  run: keep running after this command ends (nohup); output goes to
                            ~/$REMOTE_LOG on each worker
  --dry-run                 print the exact commands, one per line; run nothing
  --help                    this message

Example (a v4-32 pod slice: 4 hosts):
  $PROG create --zone=us-central2-b --accelerator_type=v4-32
  $PROG copy   --zone=us-central2-b
  $PROG setup  --zone=us-central2-b
  $PROG run    --zone=us-central2-b --accelerator_type=v4-32 --bucket=my-bucket \\
      --config.data.source=tfds:wikipedia/20230601.en --data_dir=gs://my-bucket/tfds
  $PROG delete --zone=us-central2-b
Follow a detached run:
  gcloud compute tpus tpu-vm ssh retromae --zone=ZONE --worker=0 --command='tail -f ~/$REMOTE_LOG'
EOF
}

# ---------------------------------------------------------------------------------------------
# Arguments (each option's name is the name of its variable)
# ---------------------------------------------------------------------------------------------
subcommand=
zone=
project=
name=retromae
accelerator_type=v4-32
runtime_version=
queued=0
spot=0
commit=HEAD
python_version=3.12
config=configs/base.py:base
workdir=
bucket=
data_dir=
detach=0
dry_run=0
main_flags=() # --config.* and everything after --, passed to retromae_jax.main as is

take_subcommand() {
  [[ -z $subcommand ]] ||
    die "unexpected argument '$1' (flags for the program go after --, or as --config.KEY=VALUE)"
  subcommand=$1
}

parse_args() {
  parse_options "zone project name accelerator_type runtime_version commit python_version config workdir bucket data_dir" "help dry_run queued spot detach" take_subcommand "$@"
  validate_args
}

validate_args() {
  case $subcommand in
    create | copy | setup | run | stop | delete) ;;
    '') die "missing the subcommand: create, copy, setup, run, stop or delete (see --help)" ;;
    *) die "unknown subcommand '$subcommand': expected create, copy, setup, run, stop or delete" ;;
  esac
  [[ -n $zone ]] || die "--zone is required (e.g. --zone=us-central2-b)"
  [[ $name =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
    die "--name '$name': use lowercase letters, digits and dashes, starting with a letter"
  [[ $accelerator_type =~ ^[a-z0-9]+-[1-9][0-9]*$ ]] ||
    die "--accelerator_type '$accelerator_type' is not FAMILY-SIZE (v4-32, v5litepod-16, v5p-32, v6e-16)"
  [[ $python_version =~ ^3\.[0-9]+$ ]] || die "--python_version '$python_version' is not 3.X"
  if ((${#main_flags[@]} > 0)) && [[ $subcommand != run ]]; then
    die "program flags (${main_flags[0]} ...) only apply to run"
  fi
}

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

# Dry run: print the command. Otherwise: echo it to stderr (a record of what ran) and run it.
run_cmd() {
  if ((dry_run)); then
    shell_join "$@"
  else
    printf '+ %s\n' "$(shell_join "$@")" >&2
    "$@"
  fi
}

# gcloud compute tpus ARGS..., with --project when one was given.
gcloud_tpus() {
  local cmd=(gcloud compute tpus "$@")
  [[ -z $project ]] || cmd+=("--project=$project")
  run_cmd "${cmd[@]}"
}

# One shell command line, run on every worker of the slice.
on_all_workers() {
  gcloud_tpus tpu-vm ssh "$name" "--zone=$zone" --worker=all "--command=$1"
}

# Slices with more than 8 TensorCores (v2-v4, v5p) or 8 chips (v5e, v6e) span several hosts.
is_multi_host() {
  ((${accelerator_type##*-} > 8))
}

default_runtime_version() {
  case ${accelerator_type%-*} in
    v6e) echo v2-alpha-tpuv6e ;;
    v5p) echo v2-alpha-tpuv5 ;;
    v5litepod) echo v2-alpha-tpuv5-lite ;;
    v2 | v3 | v4) echo tpu-ubuntu2204-base ;;
    *) die "no default runtime version for '$accelerator_type'; pass --runtime_version=V" ;;
  esac
}

# ---------------------------------------------------------------------------------------------
# Subcommands
# ---------------------------------------------------------------------------------------------
cmd_create() {
  local version=$runtime_version extra=()
  # A plain assignment, not `local v=$(...)`, so that die in the substitution stops the script.
  [[ -n $version ]] || version=$(default_runtime_version)
  ((spot == 0)) || extra+=(--spot)
  if ((queued)); then
    gcloud_tpus queued-resources create "$name" "--zone=$zone" "--node-id=$name" \
      "--accelerator-type=$accelerator_type" "--runtime-version=$version" "${extra[@]}"
  else
    gcloud_tpus tpu-vm create "$name" "--zone=$zone" \
      "--accelerator-type=$accelerator_type" "--version=$version" "${extra[@]}"
  fi
}

cmd_copy() {
  local sha short tarball
  sha=$(git -C "$REPO_ROOT" rev-parse --verify --quiet "$commit^{commit}") ||
    die "--commit '$commit' is not a commit of $REPO_ROOT"
  short=${sha:0:12}
  if [[ $commit == HEAD && -n $(git -C "$REPO_ROOT" status --porcelain --untracked-files=no) ]]; then
    warn "the working tree has uncommitted changes; copying commit $short without them"
  fi
  tarball="${TMPDIR:-/tmp}/$REMOTE_REPO-$short.tar.gz"
  run_cmd git -C "$REPO_ROOT" archive --format=tar.gz "--prefix=$REMOTE_REPO-$short/" \
    "--output=$tarball" "$sha"
  gcloud_tpus tpu-vm scp "$tarball" "$name:$REMOTE_REPO-$short.tar.gz" "--zone=$zone" --worker=all
  # ~/retromae_jax must be our symlink (or absent): `ln -sfn` onto a real directory would put
  # the link inside it instead of replacing it.
  on_all_workers "set -e; cd ~; \
if [ -e $REMOTE_REPO ] && [ ! -L $REMOTE_REPO ]; then \
echo \"~/$REMOTE_REPO exists and is not a symlink; move it away\" >&2; exit 1; fi; \
tar -xzf $REMOTE_REPO-$short.tar.gz && rm $REMOTE_REPO-$short.tar.gz; \
echo $sha > $REMOTE_REPO-$short/COMMIT; ln -sfn $REMOTE_REPO-$short $REMOTE_REPO"
}

cmd_setup() {
  # uv fetches a Python of the requested version when the image lacks one (TPU VM images ship
  # Ubuntu 22.04's 3.10, and jax >= 0.7 needs 3.11+). jax[tpu] adds libtpu to the pinned jax.
  on_all_workers "set -e; cd ~; \
if [ ! -f $REMOTE_REPO/requirements.txt ]; then \
echo \"no ~/$REMOTE_REPO/requirements.txt: run '$PROG copy' first\" >&2; exit 1; fi; \
python3 -m pip install --user --quiet --upgrade uv; \
python3 -m uv venv --allow-existing --python $python_version $REMOTE_VENV; \
python3 -m uv pip install --python $REMOTE_VENV/bin/python \
-r $REMOTE_REPO/requirements.txt 'jax[tpu]'"
}

cmd_run() {
  if [[ -z $workdir ]]; then
    [[ -n $bucket ]] || die "run needs --workdir=gs://BUCKET/PATH or --bucket=BUCKET"
    bucket=${bucket#gs://}
    workdir="gs://${bucket%/}/retromae/$name"
  fi
  if is_multi_host && [[ $workdir != gs://* ]]; then
    die "--workdir=$workdir is not a gs:// path. $accelerator_type spans several hosts, which" \
      "must write one checkpoint together and read it back after a restart, and each host's" \
      "disk is its own: use --workdir=gs://BUCKET/PATH (or --bucket=BUCKET)"
  fi
  local args=("--config=$config" "--workdir=$workdir")
  [[ -z $data_dir ]] || args+=("--config.data.data_dir=$data_dir")
  args+=("${main_flags[@]}")

  local program
  # shellcheck disable=SC2088  # the tilde is for the worker's shell to expand
  program="~/$REMOTE_VENV/bin/python -m retromae_jax.main $(shell_join "${args[@]}")"
  if ((detach)); then
    # nohup and no open terminal descriptors let the program outlive the ssh session.
    program="nohup $program > ~/$REMOTE_LOG 2>&1 < /dev/null &"
  fi
  on_all_workers "cd ~/$REMOTE_REPO && $program"
}

cmd_stop() {
  ((queued == 0)) ||
    die "a queued resource cannot be stopped, only deleted: $PROG delete --queued --zone=$zone"
  gcloud_tpus tpu-vm stop "$name" "--zone=$zone"
}

cmd_delete() {
  if ((queued)); then
    # --force also deletes the TPU VM the queued resource created.
    gcloud_tpus queued-resources delete "$name" "--zone=$zone" --force
  else
    gcloud_tpus tpu-vm delete "$name" "--zone=$zone"
  fi
}

main() {
  parse_args "$@"
  if ((dry_run == 0)) && ! command -v gcloud >/dev/null; then
    die "gcloud not found: install the Google Cloud CLI (https://cloud.google.com/sdk)"
  fi
  "cmd_$subcommand"
}

main "$@"
