"""``dml compare``: the finished runs under a folder, and runs that differ only in their seed
grouped into one row with each metric's mean, its 95% confidence interval and the count.

The interval is Student's t: ``mean +- t(0.975, n - 1) * s / sqrt(n)`` with ``s`` the sample
standard deviation of the n runs' values; a group of one run has no interval. Two runs belong to
one group when their config.json agree on every option but those that do not change the
experiment (:data:`NOT_THE_EXPERIMENT`: the seed, where the data and the output live, the
devices, the checkpointing and logging cadence) and their metrics.json on the split.
"""
import math
import os

import numpy as np

from .errors import DmlError

# config.json keys that say how or where a run ran, not what it is: runs differing only in them
# (and in the seed) are repetitions of one experiment
NOT_THE_EXPERIMENT = frozenset((
    "seed", "run_dir", "started", "resumed", "argv", "output_root", "data_root", "dml_version",
    "gpus", "cpus", "kvstore", "num_workers", "save_period", "keep_checkpoints", "log_interval",
    "eval_batch_size", "projector_points"))
COLUMNS = ("run", "method", "dataset", "split", "epochs", "seeds")


def find_results(root):
    """``(run path relative to root, metrics, config)`` of every finished run under ``root``
    (unreadable ones are skipped with a warning)."""
    import logging

    from .runs import RunDir, find_runs

    found = []
    for run_dir in find_runs(root):
        run = RunDir(run_dir)
        try:
            found.append((os.path.relpath(run_dir, root), run.read(run.METRICS),
                          run.read(run.CONFIG)))
        except DmlError as err:
            logging.getLogger("dml").warning("skipping %s: %s", run_dir, err)
    return found


def experiment_key(metrics, config):
    """What two repetitions of one experiment share (see :data:`NOT_THE_EXPERIMENT`)."""
    import json

    options = {k: v for k, v in config.items() if k not in NOT_THE_EXPERIMENT}
    return json.dumps([options, metrics.get("split", "test")], sort_keys=True, default=str)


def confidence_interval(values, level=0.95):
    """``(mean, half width)`` of Student's t interval over ``values`` (half width None for a
    single value)."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, None
    from scipy import stats

    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(
        len(values))
    return mean, float(half)


def _method_name(config):
    method = config.get("method", "?")
    return "%s (%s)" % (method, config["selector"]) if config.get("selector") else method


def _one_run_per_seed(members):
    """A group's runs, one per seed: a second run of an experiment with the same seed (a copied
    run folder, or the same run repeated) is no new sample and is left out, with a warning."""
    import logging

    kept, seen = [], {}
    for member in members:
        seed = member[2].get("seed")
        if seed in seen:
            logging.getLogger("dml").warning(
                "leaving out %s: the same experiment and seed (%s) as %s, so no new sample "
                "(a copy of the run folder?)", member[0], seed, seen[seed])
            continue
        seen[seed] = member[0]
        kept.append(member)
    return kept


def _best_first(row):
    value = row.get("map_at_r")
    finite = isinstance(value, (int, float)) and math.isfinite(value)
    return (0 if finite else 1, -float(value) if finite else 0.0, row["run"])


def compare_rows(root, group=True, results=None):
    """One dict per experiment under ``root`` (per run with ``group=False``), best mean
    ``map_at_r`` first (a run without a finite one last). Metric ``m`` holds the mean, ``m_ci95``
    the half width of its 95% interval (None for one run); ``n`` counts the runs, one per seed
    (:func:`_one_run_per_seed`), ``seeds`` lists their seeds and ``runs`` their paths.
    ``results``: :func:`find_results` of ``root``, when read already."""
    from .evaluation import METRIC_KEYS

    groups = {}
    for path, metrics, config in (find_results(root) if results is None else results):
        key = experiment_key(metrics, config) if group else path
        groups.setdefault(key, []).append((path, metrics, config))
    rows = []
    for members in groups.values():
        members.sort(key=lambda m: (m[2].get("seed", 0), m[0]))
        members = _one_run_per_seed(members)
        path, metrics, config = members[0]
        row = dict(run=path, method=_method_name(config), dataset=config.get("dataset", "?"),
                   split=metrics.get("split", "test"), n=len(members),
                   epochs=config.get("epochs", metrics.get("epochs")),
                   seeds=",".join(str(m[2].get("seed", "?")) for m in members),
                   runs=[m[0] for m in members])
        if len(members) == 1:
            row["epochs"] = metrics.get("epochs", row["epochs"])
        for key in METRIC_KEYS + ("verification_auc", "train_seconds"):
            values = [m[1][key] for m in members if isinstance(m[1].get(key), (int, float))]
            if len(values) == len(members):
                row[key], row[key + "_ci95"] = confidence_interval(values)
        rows.append(row)
    rows.sort(key=_best_first)
    return rows


def differing_options(root, results=None):
    """For each run path, the options (``name=value``) in which its experiment differs from
    the other experiments of the same method on the same dataset, so that two rows of one
    method can be told apart. ``results``: :func:`find_results` of ``root``, when read
    already."""
    results = find_results(root) if results is None else results
    by_method = {}
    for path, _, config in results:
        by_method.setdefault((_method_name(config), config.get("dataset")), []).append(
            (path, config))
    out = {}
    for runs in by_method.values():
        keys = set().union(*(c.keys() for _, c in runs)) - NOT_THE_EXPERIMENT - {
            "method", "selector", "dataset", "epochs", "class_names", "train_classes",
            "eval_classes", "validation_classes", "normalization"}
        varying = sorted(k for k in keys if len({repr(c.get(k)) for _, c in runs}) > 1)
        for path, config in runs:
            out[path] = " ".join("%s=%s" % (k, config.get(k)) for k in varying)
    return out


def format_table(rows, fmt="markdown", differing=None):
    """``(text, metric keys)``: the rows as a markdown table or CSV. Markdown cells read
    ``mean ± half width`` (``(n=3)`` in the seeds column); CSV has a ``<metric>_ci95`` column
    after each metric and the runs' paths."""
    from .evaluation import METRIC_KEYS

    metric_keys = [k for k in METRIC_KEYS + ("verification_auc",) if any(k in r for r in rows)]
    show_options = differing is not None and any(differing.get(r["run"]) for r in rows)
    columns = list(COLUMNS) + (["options"] if show_options else []) + metric_keys + [
        "train_seconds"]

    def number(row, key, fmt_value):
        value = row.get(key)
        if value is None:
            return ""
        return fmt_value % value

    if fmt == "csv":
        import csv
        import io

        header = []
        for c in columns:
            header.append(c)
            if c in metric_keys or c == "train_seconds":
                header.append(c + "_ci95")
        header += ["n", "runs"]
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            cells = []
            for c in columns:
                if c in metric_keys or c == "train_seconds":
                    digits = "%.1f" if c == "train_seconds" else "%.4f"
                    cells += [number(row, c, digits), number(row, c + "_ci95", digits)]
                elif c == "options":
                    cells.append(differing.get(row["run"], ""))
                else:
                    cells.append(str(row.get(c, "")))
            cells += [str(row["n"]), ";".join(row["runs"])]
            writer.writerow(cells)
        return out.getvalue().rstrip("\n"), metric_keys

    def cell(row, key):
        if key in metric_keys or key == "train_seconds":
            digits = "%.1f" if key == "train_seconds" else "%.4f"
            text = number(row, key, digits)
            if text and row.get(key + "_ci95") is not None:
                text += " ± " + digits % row[key + "_ci95"]
            return text
        if key == "seeds":
            return row["seeds"] + (" (n=%d)" % row["n"] if row["n"] > 1 else "")
        if key == "run" and row["n"] > 1:
            return "%s (+%d)" % (row["run"], row["n"] - 1)
        if key == "options":
            return differing.get(row["run"], "")
        value = row.get(key)
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---" if c in COLUMNS or c == "options" else "---:"
                            for c in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(cell(row, c) or "-" for c in columns) + " |")
    return "\n".join(lines), metric_keys
