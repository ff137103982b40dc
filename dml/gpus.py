"""Which GPUs the installed MXNet build can run, read before anything is created.

MXNet 1.9.1's CUDA wheels carry machine code for compute capabilities 5.0 to 8.6 and no PTX, so
on a newer GPU (Hopper, H100/H200, capability 9.0) every kernel launch fails with "no kernel image
is available for execution on the device", deep inside the first convolution. This module asks
``nvidia-smi`` for each GPU's capability and compares it with the build's range:

- ``choose_wheel()``: the wheel ``make install`` installs (the CUDA one only when every GPU is in
  its range; else the CPU one, with the reason);
- ``check_gpus(indices)``: a :class:`dml.DmlError` naming a requested GPU the build cannot run;
- ``usable_gpus(count)``: of the GPUs mxnet sees, those it can run (the others with a warning).

No MXNet import here: the Makefile runs this with the system Python before anything is installed.
"""
import logging
import re
import shutil
import subprocess

from .errors import DmlError

log = logging.getLogger("dml")

CUDA_WHEEL = "mxnet-cu112"
CPU_WHEEL = "mxnet"
# compute capabilities each CUDA build of MXNet 1.9.1 has machine code for (no PTX: nothing newer)
WHEEL_CAPABILITIES = {
    "mxnet-cu112": ((5, 0), (8, 6)),
    "mxnet-cu117": ((5, 0), (8, 6)),
}


class Gpu:
    """One GPU as ``nvidia-smi`` lists it."""

    def __init__(self, index, name, capability):
        self.index, self.name, self.capability = index, name, capability

    @property
    def capability_text(self):
        return "%d.%d" % self.capability if self.capability else "unknown"

    def __repr__(self):
        return "GPU %d (%s, compute capability %s)" % (self.index, self.name,
                                                      self.capability_text)


NVIDIA_SMI_TIMEOUT = 5  # seconds: a driver that does not answer by then is reported as such


def query_gpus(timeout=NVIDIA_SMI_TIMEOUT):
    """Every GPU ``nvidia-smi`` lists, with its compute capability; [] without nvidia-smi or
    when it fails (no driver, no GPU): :func:`gpu_report` says which."""
    return gpu_report(timeout)[0]


def gpu_report(timeout=NVIDIA_SMI_TIMEOUT):
    """``(gpus, problem)``: the GPUs ``nvidia-smi`` lists, and None, or [] and what went wrong
    (not installed, timed out after ``timeout`` seconds, failed with its first line)."""
    if shutil.which("nvidia-smi") is None:
        return [], "nvidia-smi is not installed (no NVIDIA driver)"
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=index,name,compute_cap",
                               "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return [], "nvidia-smi did not answer within %d s (a hung driver?)" % timeout
    except OSError as err:
        return [], "nvidia-smi could not start (%s)" % (err.strerror or err)
    if proc.returncode != 0:
        said = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        return [], "nvidia-smi failed (exit %d)%s" % (proc.returncode, ": " + said[0][:160]
                                                     if said else "")
    return _parse_gpus(proc.stdout), None


def _parse_gpus(text):
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3 or not parts[0].isdigit():
            continue
        match = re.fullmatch(r"(\d+)\.(\d+)", parts[-1])
        gpus.append(Gpu(int(parts[0]), ", ".join(parts[1:-1]),
                        (int(match.group(1)), int(match.group(2))) if match else None))
    return gpus


def supports(wheel, capability):
    """Whether ``wheel`` has code for ``capability`` (True when either is unknown: only a known
    mismatch is refused)."""
    span = WHEEL_CAPABILITIES.get(wheel)
    if span is None or capability is None:
        return True
    return span[0] <= capability <= span[1]


def span_text(wheel):
    low, high = WHEEL_CAPABILITIES[wheel]
    return "%d.%d to %d.%d" % (low + high)


def choose_wheel(gpus=None):
    """``(wheel, reason)``: the CUDA wheel when nvidia-smi lists GPUs and the wheel has code for
    every one of them, else the CPU wheel; ``reason`` says why the CPU one was chosen over GPUs
    (None otherwise)."""
    gpus = query_gpus() if gpus is None else gpus
    if not gpus:
        return CPU_WHEEL, None
    unsupported = [g for g in gpus if not supports(CUDA_WHEEL, g.capability)]
    if not unsupported:
        return CUDA_WHEEL, None
    return CPU_WHEEL, ("installing the CPU build of mxnet: %s; %s 1.9.1 has GPU code for compute "
                       "capability %s only (no PTX), so it cannot run there (MXNET=%s make "
                       "install forces it)" % (", ".join(map(repr, unsupported)), CUDA_WHEEL,
                                               span_text(CUDA_WHEEL), CUDA_WHEEL))


def installed_build():
    """The installed MXNet distribution's name (``mxnet``, ``mxnet-cu112``, ...), or None."""
    from importlib import metadata

    for name in [CPU_WHEEL] + sorted(WHEEL_CAPABILITIES):
        try:
            metadata.distribution(name)
            return name
        except metadata.PackageNotFoundError:
            continue
    return None


def _unsupported(indices, gpus, build):
    by_index = {g.index: g for g in gpus}
    return [by_index[i] for i in indices if i in by_index
            and not supports(build, by_index[i].capability)]


def check_gpus(indices, gpus=None, build=None, cpu_hint="gpus=''"):
    """Raise :class:`dml.DmlError` when a GPU of ``indices`` has a compute capability the
    installed build has no code for (before a run folder exists); ``cpu_hint`` says how to ask
    for the CPU instead."""
    build = build or installed_build()
    if not indices or build not in WHEEL_CAPABILITIES:
        return
    bad = _unsupported(indices, query_gpus() if gpus is None else gpus, build)
    if bad:
        raise DmlError("%s cannot run the installed %s 1.9.1, which has GPU code for compute "
                       "capability %s only (no PTX): use the CPU (%s), an older GPU, or a build "
                       "of MXNet for that architecture"
                       % (", ".join(map(repr, bad)), build, span_text(build), cpu_hint))


def usable_gpus(count, gpus=None, build=None):
    """Of GPUs ``0 .. count-1`` (those mxnet sees), the ones the installed build can run; the
    others are left out with a warning."""
    build = build or installed_build()
    indices = list(range(count))
    if not indices or build not in WHEEL_CAPABILITIES:
        return indices
    bad = _unsupported(indices, query_gpus() if gpus is None else gpus, build)
    if bad:
        log.warning("leaving out %s: %s 1.9.1 has GPU code for compute capability %s only",
                    ", ".join(map(repr, bad)), build, span_text(build))
    return [i for i in indices if i not in {g.index for g in bad}]
