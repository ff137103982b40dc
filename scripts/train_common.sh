# Sourced by the train_cifar_*.sh launchers: find the project's Python and run `dml train`.
# The launcher's own options come first and the user's ("$@") last, so the user's win.
set -euo pipefail
DML_HOME="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -x "$DML_HOME/.venv/bin/python" ]; then
  DML_PYTHON="$DML_HOME/.venv/bin/python"
else
  DML_PYTHON="${PYTHON:-python3}"
  export PYTHONPATH="$DML_HOME${PYTHONPATH:+:$PYTHONPATH}"
fi

dml_train() {
  exec "$DML_PYTHON" -m dml train "$@"
}
