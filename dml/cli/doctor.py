"""``dml doctor``: installed versions, usable GPUs, one training step on each device."""
from ..errors import error_summary
from .common import _Formatter



def add_parser(sub):
    """The ``doctor`` subcommand's parser."""
    doctor = sub.add_parser(
        "doctor", help="check this machine: installed versions, usable GPUs, one training step",
        description="Print the Python, MXNet build (and its CUDA), numpy, numba, threads and every "
        "GPU nvidia-smi lists with its compute capability and whether this build can run it; then "
        "run one ResNet-18 + semi-hard-loss training step on the CPU and each usable GPU. Exit 1 "
        "when a step fails.", formatter_class=_Formatter)
    doctor.set_defaults(func=cmd_doctor)


def cmd_doctor(args):
    from ..doctor import environment, smoke_test, usable_contexts

    rows = environment()
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print("%-*s  %s" % (width, key, value))
    failed = 0
    for ctx in usable_contexts():
        try:
            seconds = smoke_test(ctx)
            print("%-*s  ok: one ResNet-18 + semi-hard training step in %.2f s"
                  % (width, "step on %s" % ctx, seconds))
        except Exception as err:  # pylint: disable=broad-except
            failed += 1
            print("%-*s  FAILED: %s" % (width, "step on %s" % ctx, error_summary(err)))
    return 1 if failed else 0
