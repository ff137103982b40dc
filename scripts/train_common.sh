# Sourced by the train_cifar_*.sh launchers: find the project's Python and run `dml train`.
# The launcher's own options come first and the user's ("$@") last, so the user's win.
set -euo pipefail
DML_HOME="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DML_LAUNCHER="$(basename "$0")"
if [ -x "$DML_HOME/.venv/bin/python" ]; then
  DML_PYTHON="$DML_HOME/.venv/bin/python"
else
  DML_PYTHON="${PYTHON:-python3}"
  export PYTHONPATH="$DML_HOME${PYTHONPATH:+:$PYTHONPATH}"
  if ! "$DML_PYTHON" -c "import mxnet" >/dev/null 2>&1; then
    echo "$DML_LAUNCHER: error: dml is not installed (no $DML_HOME/.venv): run make install in $DML_HOME first" >&2
    exit 2
  fi
fi

# A launcher is one method's recipe (its batch options fit that method): another --method is
# refused with the launcher or command that runs it, instead of a clash of options inside dml.
dml_launcher_method="${DML_LAUNCHER#train_cifar_}"
dml_launcher_method="${dml_launcher_method%.sh}"
dml_prev=""
for dml_arg in "$@"; do
  dml_wanted=""
  case "$dml_arg" in
    --method=*) dml_wanted="${dml_arg#--method=}" ;;
  esac
  [ "$dml_prev" = "--method" ] && dml_wanted="$dml_arg"
  if [ -n "$dml_wanted" ] && [ "$dml_wanted" != "$dml_launcher_method" ]; then
    if [ -f "$DML_HOME/train_cifar_$dml_wanted.sh" ]; then
      instead="bash train_cifar_$dml_wanted.sh"
    else
      instead="python -m dml train --method $dml_wanted --dataset cifar10"
    fi
    echo "$DML_LAUNCHER: error: this launcher trains $dml_launcher_method (its batch options are that method's); for --method $dml_wanted run: $instead" >&2
    exit 2
  fi
  dml_prev="$dml_arg"
done

dml_train() {
  exec "$DML_PYTHON" -m dml train "$@"
}
