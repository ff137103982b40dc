"""The project's structure holds: one owner of the run folder's files, a short fit loop, and a
README whose links all lead somewhere."""
import ast
import glob
import os
import re

from runhelpers import ROOT

# the names of what lies inside a run folder, as string literals
RUN_FILE_NAMES = re.compile(r"""["'](config\.json|metrics\.json|params|logs|plots|history\.json|"""
                            r"""train\.log|best\.json|projector_config\.pbtxt|embedding-symbol\.json|"""
                            r"""(net|trainer|classifier|state|embedding|memory)-%[^"']*)["']""")


def test_only_dml_runs_names_the_files_of_a_run_folder():
    offenders = []
    for path in sorted(glob.glob(os.path.join(ROOT, "dml", "**", "*.py"), recursive=True)):
        if os.path.dirname(path) == os.path.join(ROOT, "dml", "runs"):
            continue
        tree = ast.parse(open(path, encoding="utf-8").read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and RUN_FILE_NAMES.fullmatch(repr(node.value).replace("'", '"')):
                offenders.append("%s:%d %r" % (os.path.relpath(path, ROOT), node.lineno,
                                               node.value))
    assert offenders == []


def test_fit_reads_top_to_bottom_in_under_60_lines():
    tree = ast.parse(open(os.path.join(ROOT, "dml", "train", "loop.py"), encoding="utf-8").read())
    fit = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "fit")
    assert fit.end_lineno - fit.lineno + 1 <= 60


def test_every_relative_link_of_the_readme_and_doc_pages_exists():
    missing = []
    for page in [os.path.join(ROOT, "README.md")] + glob.glob(os.path.join(ROOT, "doc", "*.md")):
        text = open(page, encoding="utf-8").read()
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            if not os.path.exists(os.path.join(os.path.dirname(page), target)):
                missing.append("%s -> %s" % (os.path.relpath(page, ROOT), target))
    assert missing == []


def test_the_readme_leads():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert len(text.splitlines()) <= 350
    order = ["make demo", "source .venv/bin/activate", "## Train", "## Use the library",
             "## Methods and datasets", "## The run folder", "## TensorBoard", "## Evaluate and compare",
             "## Several GPUs and machines", "## Resume and crash safety"]
    positions = [text.index(marker) for marker in order]
    assert positions == sorted(positions)
    example = open(os.path.join(ROOT, "examples", "train_loop.py"), encoding="utf-8").read()
    for line in ("loss_fn = TripletSemiHardLoss(margin=0.2)", "trainer.step(1)",
                 "for images, labels in loader:"):
        assert line in text and line in example, line


def test_library_errors_name_python_parameters_not_flags():
    """Only the CLI (dml/cli/, and the benchmark's own commands: bench.py, bench_serve.py) names
    --flags; the library names parameters (``data_root=...``, `` `n_classes` ``), which the CLI
    maps to flags."""
    offenders = []
    for path in sorted(glob.glob(os.path.join(ROOT, "dml", "**", "*.py"), recursive=True)):
        if os.path.basename(path) in ("bench.py", "bench_serve.py", "__main__.py") or \
                os.path.basename(os.path.dirname(path)) == "cli":
            continue
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in (
                    "DmlError", "ValueError", "WriteFailed", "NonFiniteLoss"):
                for sub in ast.walk(node):
                    if isinstance(sub, ast.Constant) and isinstance(sub.value, str) \
                            and re.search(r"(^|\s|\()--[a-z]", sub.value):
                        offenders.append("%s:%d %r" % (os.path.relpath(path, ROOT), sub.lineno,
                                                       sub.value[:60]))
    assert offenders == []


def test_the_cli_maps_parameter_names_to_flags():
    from dml.cli import _destinations, as_flags, build_parser

    flags = _destinations(build_parser())
    assert {"data_root", "n_classes", "checkpoint", "split", "gpus"} <= flags
    assert "run_dir" not in flags and "root" not in flags  # positionals are not flags
    assert as_flags("n_classes=11 but digits has only 10: pass n_classes=10; lower `n_samples`",
                    flags) == "--n-classes 11 but digits has only 10: pass --n-classes 10; lower " \
                              "--n-samples"
    assert as_flags("checkpoint=/a/b=c is not in x; gpus=''; run_dir=x; `unknown`", flags) == \
        "--checkpoint /a/b=c is not in x; --gpus ''; run_dir=x; `unknown`"


def test_every_dml_command_the_readme_shows_parses():
    """Each `python -m dml ...` line of the README's command blocks is accepted by the parser
    (no flag that does not exist, no missing argument)."""
    import shlex

    from dml.cli import build_parser

    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    seen, inside = 0, False
    for line in text.splitlines():
        if line.startswith("```"):
            inside = not inside
            continue
        line = line.split(" #")[0].strip()
        if inside and line.startswith("python -m dml "):
            try:
                build_parser().parse_args(shlex.split(line)[3:])
            except SystemExit:
                raise AssertionError("the README's command does not parse: %s" % line) from None
            seen += 1
    assert seen >= 15
