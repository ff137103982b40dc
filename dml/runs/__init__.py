"""Run folders: ``<output-root>/<dataset>/<method>/<YYYYmmddHHMM>[-N]/`` with ``logs/``,
``params/``, ``config.json`` and ``metrics.json``. An existing folder is never reused.

- :mod:`.files`: atomic writes, JSON, one-line write failures;
- :mod:`.checkpoints`: checkpoint ids, completeness, pruning, resolving a checkpoint's name;
- :mod:`.folder`: :class:`RunDir` and finding runs.
"""
# every name the module had before it was a package (its commands and tests import them)
from .files import (_FILE_MODE, _link, _listdir, _LOW_SPACE, _remove_quietly, _save_npz, _umask,
                    read_json, temporary_file, write_atomic, write_failure, write_json)
from .checkpoints import (_EXPORT_PARAMS, _exportable, _NET_PARAMS, _STATE, checkpoint_id,
                          complete_checkpoints, partial_files, prune_checkpoints,
                          remove_partial_files, resolve_checkpoint, wait_for_mxnet)
from .folder import (create_run_dir, evaluated_images, find_runs, read_run_json, RunDir)

settle = wait_for_mxnet  # its older name

