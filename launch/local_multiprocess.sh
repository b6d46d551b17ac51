#!/usr/bin/env bash
# Runs one command as N JAX processes on this machine: the multi-host code path (a coordinator,
# process ids, CPU devices split between processes) without a second host. See usage() below.
set -euo pipefail

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# After one process fails, the others get SIGTERM, then SIGKILL this many seconds later: a peer
# of a dead process can block in a collective forever, but a TERM'd one should get to exit cleanly.
readonly KILL_GRACE_S=10

usage() {
  cat <<EOF
Usage: $PROG [OPTIONS] N -- COMMAND [ARGS...]

Runs COMMAND as N JAX processes on this machine, for testing multi-process code on one host.
Process i gets, on top of the current environment:
  JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT   (process 0 serves it)
  JAX_NUM_PROCESSES=N
  JAX_PROCESS_ID=i
  JAX_NUM_CPU_DEVICES=K                    (CPU devices of each process)

Options:
  --port=P                 coordinator port (default: a free port picked by the OS)
  --devices_per_process=K  CPU devices per process. Default: JAX_NUM_CPU_DEVICES, if set, is
                           the TOTAL over all processes and is split evenly (JAX_NUM_CPU_DEVICES=8
                           and N=2 give 4 each; it must divide by N); unset, each process gets 1.
  --log_dir=DIR            write process i's output to DIR/process_i.log and show only process
                           0's on the terminal (default: all processes on stdout, each line
                           prefixed with [pI])
  --dry-run                print each process's environment and command line; run nothing
  --help                   this message

Behaviour:
  - Waits for all processes. If one fails, the others get SIGTERM (SIGKILL ${KILL_GRACE_S}s later),
    and $PROG exits with the failed process's status, naming it.
  - SIGINT (Ctrl-C) and SIGTERM are forwarded to every process; a second one sends SIGKILL.
  - COMMAND's stdin is /dev/null (N processes cannot share a terminal's input).
  - JAX_NUM_CPU_DEVICES only sizes JAX's CPU backend. On a GPU/TPU machine add JAX_PLATFORMS=cpu,
    or the processes will all try to use the same accelerators.

Example (2 processes with 4 CPU devices each):
  JAX_NUM_CPU_DEVICES=8 $PROG 2 -- python -m retromae_jax.main \\
      --config=configs/base.py:smoke --workdir=/tmp/retromae_2proc
EOF
}

# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------
num_processes=
port=
port_was_given=
devices_per_process=
log_dir=
dry_run=0
command=()

parse_args() {
  while (($# > 0)); do
    case $1 in
      --)
        shift
        command=("$@")
        break
        ;;
      --*)
        split_option "$1"
        shift
        case $OPT_NAME in
          port | devices_per_process | log_dir)
            if ((OPT_HAS_VALUE == 0)); then
              # "--zone --dry-run" is a forgotten value, not a zone named "--dry-run".
              (($# > 0)) && [[ $1 != --* ]] || die "--$OPT_NAME needs a value (--$OPT_NAME=VALUE)"
              OPT_VALUE=$1
              shift
            fi
            ;;
          help | dry_run)
            ((OPT_HAS_VALUE == 0)) || die "--$OPT_NAME takes no value"
            ;;
          *) die "unknown option --$OPT_NAME (see --help)" ;;
        esac
        case $OPT_NAME in
          help) usage; exit 0 ;;
          dry_run) dry_run=1 ;;
          port) port=$OPT_VALUE ;;
          devices_per_process) devices_per_process=$OPT_VALUE ;;
          log_dir) log_dir=$OPT_VALUE ;;
        esac
        ;;
      *)
        [[ -z $num_processes ]] || die "unexpected argument '$1' (the command goes after --)"
        num_processes=$1
        shift
        ;;
    esac
  done

  [[ -n $num_processes ]] || die "missing N, the number of processes (see --help)"
  is_positive_int "$num_processes" || die "N must be a whole number >= 1, got '$num_processes'"
  ((${#command[@]} > 0)) || die "missing the command: $PROG N -- COMMAND [ARGS...]"
  if [[ -n $port ]] && ! { is_positive_int "$port" && ((port <= 65535)); }; then
    die "--port must be in 1..65535, got '$port'"
  fi
  if [[ -n $devices_per_process ]]; then
    is_positive_int "$devices_per_process" ||
      die "--devices_per_process must be a whole number >= 1, got '$devices_per_process'"
  fi
}

# ---------------------------------------------------------------------------------------------
# The plan: port and device split
# ---------------------------------------------------------------------------------------------

# Asks the OS for a free port by binding port 0. Another program could take it before process 0
# binds it; that is rare on a dev box, and --port pins one.
pick_free_port() {
  local python
  python=$(command -v python3 || command -v python) ||
    die "need python3 (or python) to pick a free port; or pass --port=P"
  "$python" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# JAX_NUM_CPU_DEVICES in the launcher's environment is the machine-wide total: people set it to
# "how many devices I want to test with", and N processes should share that, not multiply it.
resolve_devices_per_process() {
  [[ -z $devices_per_process ]] || return 0
  local total=${JAX_NUM_CPU_DEVICES:-}
  if [[ -z $total ]]; then
    devices_per_process=1
    return
  fi
  is_positive_int "$total" || die "JAX_NUM_CPU_DEVICES must be a whole number >= 1, got '$total'"
  ((total % num_processes == 0)) ||
    die "JAX_NUM_CPU_DEVICES=$total does not split evenly over $num_processes processes;" \
      "set it to a multiple of $num_processes or pass --devices_per_process=K"
  devices_per_process=$((total / num_processes))
}

# Sets PROCESS_ENV to the environment of process $1, as NAME=VALUE words.
process_env() {
  PROCESS_ENV=(
    "JAX_COORDINATOR_ADDRESS=127.0.0.1:$port"
    "JAX_NUM_PROCESSES=$num_processes"
    "JAX_PROCESS_ID=$1"
    "JAX_NUM_CPU_DEVICES=$devices_per_process"
  )
}

print_plan() {
  echo "# $num_processes processes, coordinator 127.0.0.1:$port," \
    "$devices_per_process CPU device(s) each"
  [[ -n $port_was_given ]] || echo "# (port $port is free now; a real run picks its own unless --port=P)"
  if [[ -n $log_dir ]]; then
    echo "# output: $log_dir/process_I.log (process 0's also on stdout)"
  else
    echo "# output: stdout, each line prefixed with [pI]"
  fi
  local i
  for ((i = 0; i < num_processes; i++)); do
    process_env "$i"
    shell_join "${PROCESS_ENV[@]}" "${command[@]}"
  done
}

# ---------------------------------------------------------------------------------------------
# Running: children, their output, signals
# ---------------------------------------------------------------------------------------------
declare -A running=() # process index -> pid, while it runs
sink_pids=()
fifo_dir=
stopping=0         # 1 once the others have been told to stop after a failure
signals_received=0 # INT/TERM received by the trap, and acted on by handle_signals
signals_handled=0
last_signal=
kill_deadline=0    # SECONDS value after which the remaining children get SIGKILL; 0 = none
failed_process=    # the first process that exited non-zero, and its status
failed_status=0

# Reads one process's output on stdin and sends it where --log_dir says.
sink() {
  local i=$1 line
  # A sink outlives its process's last words (a checkpoint saved on SIGTERM, a traceback): a
  # signal meant for the launcher must not kill it and break its process's pipe.
  trap '' INT TERM
  if [[ -z $log_dir ]]; then
    # `|| [[ -n $line ]]` keeps a last line that has no newline.
    while IFS= read -r line || [[ -n $line ]]; do
      printf '[p%d] %s\n' "$i" "$line"
    done
  elif ((i == 0)); then
    tee "$log_dir/process_0.log"
  else
    cat >"$log_dir/process_$i.log"
  fi
}

start_process() {
  local i=$1 fifo="$fifo_dir/process_$1"
  mkfifo "$fifo"
  sink "$i" <"$fifo" &
  sink_pids+=($!)
  process_env "$i"
  # Job control gives the child its own process group, which (a) restores SIGINT, that bash
  # otherwise ignores in background commands, so a forwarded Ctrl-C reaches it, and (b) lets one
  # kill reach everything COMMAND started (a shell wrapper's python, say).
  set -m
  env "${PROCESS_ENV[@]}" "${command[@]}" <"/dev/null" >"$fifo" 2>&1 &
  running[$i]=$!
  set +m
}

# Sends signal $1 to the process group of every child still running.
signal_children() {
  local pid
  for pid in "${running[@]}"; do
    kill -s "$1" -- "-$pid" 2>/dev/null || true
  done
}

# The trap only records the signal: the poll loop acts on it (and prints), outside the sleep
# whose stderr is silenced.
on_signal() {
  signals_received=$((signals_received + 1))
  last_signal=$1
}

# Forwards the first INT/TERM to every process; a second one kills them.
handle_signals() {
  while ((signals_handled < signals_received)); do
    signals_handled=$((signals_handled + 1))
    if ((signals_handled == 1)); then
      printf '%s: got SIG%s, forwarding it to the processes (send it again to kill them)\n' \
        "$PROG" "$last_signal" >&2
      signal_children "$last_signal"
    else
      signal_children KILL
    fi
  done
}

# Records how process $1 ended; the first failure stops the others.
on_exit_of() {
  local i=$1 status=$2
  ((status != 0)) || return 0
  if [[ -z $failed_process ]]; then
    failed_process=$i
    failed_status=$status
  fi
  if ((stopping == 0 && signals_received == 0 && ${#running[@]} > 0)); then
    printf '%s: process %d failed (exit status %d); stopping the other processes\n' \
      "$PROG" "$i" "$status" >&2
    stopping=1
    signal_children TERM
    kill_deadline=$((SECONDS + KILL_GRACE_S))
  fi
}

# Polls rather than `wait -n`: bash < 5.1 cannot say which job `wait -n` reaped, and a signal
# still gets handled within one poll interval.
wait_for_children() {
  local i pid status
  while ((${#running[@]} > 0)); do
    handle_signals
    for i in "${!running[@]}"; do
      pid=${running[$i]}
      kill -0 "$pid" 2>/dev/null && continue
      status=0
      wait "$pid" 2>/dev/null || status=$?
      unset 'running[$i]'
      on_exit_of "$i" "$status"
    done
    if ((kill_deadline > 0 && SECONDS >= kill_deadline)); then
      signal_children KILL
      kill_deadline=0
    fi
    # `|| true`: a Ctrl-C also hits this sleep; the trap has run by the time it returns.
    # 2>/dev/null on the group: bash reports a child killed by a signal ("line N: PID Killed
    # ...") when a foreground command ends; report_failure says it better.
    ((${#running[@]} == 0)) || { sleep 0.2 || true; } 2>/dev/null
  done
  # The sinks end when their process's output closes; waiting makes every line land before exit.
  wait "${sink_pids[@]}" 2>/dev/null || true
}

cleanup() {
  # Only reached with children still running if this script itself failed: don't orphan them.
  signal_children KILL
  [[ -z $fifo_dir ]] || rm -rf "$fifo_dir"
}

report_failure() {
  [[ -n $failed_process ]] || return 0
  if [[ -n $log_dir ]] && ((failed_process != 0)); then
    printf '%s: last lines of %s:\n' "$PROG" "$log_dir/process_$failed_process.log" >&2
    tail -n 20 "$log_dir/process_$failed_process.log" >&2 || true
  fi
  printf '%s: process %d of %d exited with status %d\n' \
    "$PROG" "$failed_process" "$num_processes" "$failed_status" >&2
}

main() {
  parse_args "$@"
  port_was_given=$port
  [[ -n $port ]] || port=$(pick_free_port)
  resolve_devices_per_process
  if ((dry_run)); then
    print_plan
    return 0
  fi

  [[ -z $log_dir ]] || mkdir -p "$log_dir"
  fifo_dir=$(mktemp -d "${TMPDIR:-/tmp}/local_multiprocess.XXXXXX")
  trap cleanup EXIT
  trap 'on_signal INT' INT
  trap 'on_signal TERM' TERM

  local i
  for ((i = 0; i < num_processes; i++)); do
    start_process "$i"
  done
  wait_for_children
  report_failure
  return "$failed_status"
}

main "$@"
