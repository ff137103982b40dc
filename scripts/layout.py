"""The layout section of doc/reference.md, generated from the tree: dml's modules layer by layer
(the layers of tests/test_layers.py, which checks the imports), each with the first sentence of
its docstring, then the other top-level folders.

    .venv/bin/python scripts/layout.py            # print it
    .venv/bin/python scripts/layout.py --write    # replace the section in doc/reference.md

tests/test_layers.py checks that doc/reference.md holds what this prints.
"""
import argparse
import ast
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from test_layers import LAYERS, layer_of, module_names  # noqa: E402

REFERENCE = os.path.join(ROOT, "doc", "reference.md")
WIDTH = 100
LONGEST = 140  # characters of a module's description
OTHERS = [
    ("scripts/", "launch.py (distributed jobs over dmlc_tracker), method_table.py (the method "
                 "tables), hostile_table.py (doc/hostile*.md), external_sets.py (doc/unseen.md's "
                 "folders), layout.py (this section), the doc figures (make doc)"),
    ("examples/", "the library without the CLI, run by the tests"),
    ("doc/", "the detail pages and their figures"),
    ("tests/", "the pytest suite (doc/tests.md)"),
    ("(top)", "Makefile, setup.py, requirements.txt, .ci/run, train_cifar_*.sh"),
]


def first_sentence(path):
    text = ast.get_docstring(ast.parse(open(path, encoding="utf-8").read())) or ""
    text = " ".join(text.split("\n\n")[0].split())  # the first paragraph
    match = re.search(r"(?<!e\.g)(?<!i\.e)\.(\s|$)", text)
    text = text[:match.start()] if match else text
    text = text.replace("``", "").replace(":class:", "").replace(":func:", "").replace(
        ":mod:", "").replace("`", "")
    if len(text) > LONGEST:  # two lines at most
        text = text[:LONGEST - 4].rsplit(" ", 1)[0].rstrip(",;:") + " ..."
    return text


def wrap(prefix, text, indent):
    lines, line = [], prefix
    for word in text.split():
        if len(line) + 1 + len(word) > WIDTH and line.strip():
            lines.append(line.rstrip())
            line = " " * indent
        line += ("" if line.endswith(" ") or not line else " ") + word
    lines.append(line.rstrip())
    return lines


def layout():
    modules = module_names(os.path.join(ROOT, "dml"))
    out = ["```", "dml/  layers, lowest first: a module imports only from its own layer and the ones "
           "listed before it"]
    for number, (title, _) in enumerate(LAYERS):
        out.append("")
        out.append("  %d. %s" % (number + 1, title))
        for module in sorted(m for m in modules if layer_of(m, LAYERS) == number):
            path = os.path.relpath(modules[module], os.path.join(ROOT, "dml"))
            out.extend(wrap("     %-22s" % path, first_sentence(modules[module]), 27))
    out.append("")
    for folder, text in OTHERS:
        out.extend(wrap("%-10s" % folder, text, 10))
    out.append("```")
    return "\n".join(out) + "\n"


def section(text):
    """doc/reference.md's Layout block (from its ``` to the closing ```)."""
    start = text.index("## Layout\n")
    block = text.index("```", start)
    end = text.index("```\n", block + 3) + 4
    return block, end


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace the section in %s"
                        % os.path.relpath(REFERENCE, ROOT))
    args = parser.parse_args()
    if not args.write:
        sys.stdout.write(layout())
        return
    text = open(REFERENCE, encoding="utf-8").read()
    start, end = section(text)
    with open(REFERENCE, "w", encoding="utf-8") as f:
        f.write(text[:start] + layout() + text[end:])


if __name__ == "__main__":
    main()
