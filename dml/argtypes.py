"""argparse types shared by ``python -m dml`` and ``python -m dml.bench``: each turns the text a
user typed into a value or an ``ArgumentTypeError`` that argparse shows as one line, exit 2. No
MXNet import."""
import argparse
import math


def whole(text):
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a whole number" % text) from None


def bounded_int(low, high):
    """A whole number in [low, high]."""
    def parse(text):
        value = whole(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError("%r must be between %d and %d" % (text, low, high))
        return value
    return parse


def int_list(low, high):
    """A comma-separated list of whole numbers, each in [low, high]."""
    one = bounded_int(low, high)

    def parse(text):
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise argparse.ArgumentTypeError("%r: give one or more whole numbers, e.g. 128,512"
                                             % text)
        return [one(p) for p in parts]
    return parse


def name_list(choices):
    """A comma-separated subset of ``choices`` (empty: all of them), in the order given."""
    def parse(text):
        names = [p.strip() for p in text.split(",") if p.strip()]
        unknown = [n for n in names if n not in choices]
        if unknown:
            raise argparse.ArgumentTypeError("unknown %r: choose from %s"
                                             % (unknown[0], ", ".join(choices)))
        return names or list(choices)
    return parse


def finite_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a number" % text) from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError("%r must be a finite number" % text)
    return value


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is a single line (``prog: error: ...``), exit code 2."""

    def error(self, message):
        self.exit(2, "%s: error: %s (see --help)\n" % (self.prog, message))


def check_omp_threads(environ, prog):
    """``OMP_NUM_THREADS`` must be a whole number >= 1 when set: libgomp aborts the process
    (exit 134) on anything else as soon as MXNet loads. Returns the one-line error, or None."""
    value = environ.get("OMP_NUM_THREADS")
    if value is None or (value.strip().isdigit() and int(value) >= 1):
        return None
    return ("%s: error: OMP_NUM_THREADS=%r is not a whole number of threads >= 1: unset it or "
            "set it to the number of cores (e.g. OMP_NUM_THREADS=2)\n" % (prog, value))
