# shellcheck shell=bash
# Shared helpers for the launch/*.sh front ends. Sourced, never run.
# (launch/slurm_gpu.sbatch keeps its own copy of shell_join: sbatch runs a spooled copy of the
# batch script, from which sibling files are not reachable.)

# The scripts' own name, for messages: "local_multiprocess.sh: ...".
PROG=${0##*/}

# Empty arrays under `set -u` and associative arrays need bash 4.4 (macOS ships 3.2).
if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
  printf '%s: error: needs bash >= 4.4, this is %s (on macOS: brew install bash)\n' \
    "$PROG" "$BASH_VERSION" >&2
  exit 2
fi

die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 2
}

warn() {
  printf '%s: warning: %s\n' "$PROG" "$*" >&2
}

# Prints its arguments as one command line that a POSIX shell parses back into the same words:
# a word made only of safe characters stays bare, any other is single-quoted (only its value
# for an --option=value word, which reads better and parses the same). Dry runs print with it
# so that their output can be pasted and run as is.
shell_join() {
  local word out=()
  for word in "$@"; do
    if [[ $word =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      out+=("$word")
    elif [[ $word =~ ^(--[A-Za-z0-9_.-]+=)(.*)$ ]]; then
      out+=("${BASH_REMATCH[1]}'${BASH_REMATCH[2]//\'/\'\\\'\'}'")
    else
      out+=("'${word//\'/\'\\\'\'}'")
    fi
  done
  printf '%s\n' "${out[*]}"
}

# True for a whole number >= 1 (no leading zeros, which bash arithmetic would read as octal).
is_positive_int() {
  [[ $1 =~ ^[1-9][0-9]*$ ]]
}

# Splits one command-line option into OPT_NAME and OPT_VALUE: "--devices-per-process=4" gives
# OPT_NAME=devices_per_process, OPT_VALUE=4, OPT_HAS_VALUE=1. Dashes and underscores are the same
# in option names, so both "--dry-run" and "--dry_run" work. "--name VALUE" (a separate word) is
# handled by the callers, which know which options take a value.
# shellcheck disable=SC2034  # OPT_* are this function's outputs, read by the callers.
split_option() {
  local arg=${1#--}
  OPT_NAME=${arg%%=*}
  OPT_NAME=${OPT_NAME//-/_}
  if [[ $arg == *=* ]]; then
    OPT_VALUE=${arg#*=}
    OPT_HAS_VALUE=1
  else
    OPT_VALUE=
    OPT_HAS_VALUE=0
  fi
}

# Parses the front ends' command lines: parse_options "VALUED OPTIONS" "FLAGS" ON_WORD ARGS...
# - a valued option (--name=VALUE or --name VALUE) sets the variable of the same name;
# - a flag (--dry-run) sets its variable to 1, and --help prints `usage` and exits 0;
# - --config.* and everything after -- are appended to the caller's main_flags array;
# - any other word is handed to the function ON_WORD (the caller's positional arguments).
parse_options() {
  local valued=" $1 " flags=" $2 " on_word=$3
  shift 3
  while (($# > 0)); do
    case $1 in
      --)
        shift
        main_flags+=("$@")
        break
        ;;
      --config.*)
        main_flags+=("$1")
        shift
        ;;
      --*)
        split_option "$1"
        shift
        if [[ $valued == *" $OPT_NAME "* ]]; then
          if ((OPT_HAS_VALUE == 0)); then
            # "--zone --dry-run" is a forgotten value, not a zone named "--dry-run".
            (($# > 0)) && [[ $1 != --* ]] || die "--$OPT_NAME needs a value (--$OPT_NAME=VALUE)"
            OPT_VALUE=$1
            shift
          fi
          [[ -n $OPT_VALUE ]] || die "--$OPT_NAME needs a non-empty value"
          printf -v "$OPT_NAME" '%s' "$OPT_VALUE"
        elif [[ $flags == *" $OPT_NAME "* ]]; then
          ((OPT_HAS_VALUE == 0)) || die "--$OPT_NAME takes no value"
          [[ $OPT_NAME != help ]] || { usage; exit 0; }
          printf -v "$OPT_NAME" 1
        else
          die "unknown option --$OPT_NAME (see --help)"
        fi
        ;;
      *)
        "$on_word" "$1"
        shift
        ;;
    esac
  done
}
