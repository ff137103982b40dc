"""Helpers shared by the end-to-end tests: tiny-run settings, run-folder and PNG checks, and what
TensorBoard itself reads from a run's logs."""
import glob
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRIC_KEYS = {"precision_at_1", "r_precision", "map_at_r", "recall_at_1", "recall_at_2",
               "recall_at_4", "recall_at_8", "nmi", "ami", "knn_accuracy", "split", "num_queries",
               "embedding_dim", "epochs", "train_seconds"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    from PIL import Image

    assert open(path, "rb").read(8) == PNG_MAGIC, path
    with Image.open(path) as img:
        img.verify()
        assert img.size[0] > 100 and img.size[1] > 100


TINY = ["--n-classes", "4", "--n-samples", "4", "--embedding-dim", "16", "--num-workers", "1"]


def only_run_dir(output_root, dataset, method):
    runs = glob.glob(os.path.join(output_root, dataset, method, "*"))
    assert len(runs) == 1, runs
    assert re.fullmatch(r"\d{12}(-\d+)?", os.path.basename(runs[0]))
    return runs[0]


TENSORBOARD_READER = """
import json, sys
from google.protobuf import text_format
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.projector import projector_config_pb2
acc = EventAccumulator(sys.argv[1])
acc.Reload()
config = projector_config_pb2.ProjectorConfig()
text_format.Parse(open(sys.argv[1] + "/projector_config.pbtxt").read(), config)
print(json.dumps({
    "scalars": {t: [e.step for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]},
    "images": {t: [e.step for e in acc.Images(t)] for t in acc.Tags()["images"]},
    "projector": [[e.tensor_path, e.metadata_path, e.sprite.image_path,
                   list(e.sprite.single_image_dim)] for e in config.embeddings],
}))
"""


def read_with_tensorboard(logs_dir):
    """What TensorBoard itself reads from a run's logs (in a subprocess: mxboard's and
    TensorBoard's protobuf modules cannot share one process)."""
    proc = subprocess.run([sys.executable, "-c", TENSORBOARD_READER, logs_dir], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def signal_at_step(name, again_after=None):
    """A ``python -c`` script that runs ``dml.cli.main(sys.argv[2:])`` and, in training step
    ``sys.argv[1]``, sends its own process the signal ``name`` (``"SIGTERM"``, ``"SIGINT"``): a
    real signal, as Slurm, Kubernetes or Ctrl-C send it; ``again_after`` seconds later a second
    one when given."""
    again = ("\n        threading.Timer(%r, os.kill, (os.getpid(), signal.%s)).start()"
             % (again_after, name) if again_after is not None else "")
    return """
import os, signal, sys, threading
import dml.train.loop as engine
n, calls, step = int(sys.argv[1]), [0], engine.train_step
def train_step(*args, **kwargs):
    calls[0] += 1
    if calls[0] == n:
        os.kill(os.getpid(), signal.%s)%s
    return step(*args, **kwargs)
engine.train_step = train_step
from dml.cli import main
sys.exit(main(sys.argv[2:]))
""" % (name, again)


def run_main(argv):
    """``dml.cli.main(argv)`` in this process: ``(exit code, what it printed)``."""
    import io
    from contextlib import redirect_stdout

    from dml.cli import main

    printed = io.StringIO()
    with redirect_stdout(printed):
        code = main(argv)
    return code, printed.getvalue()


def load_json(run_dir, name="metrics.json"):
    with open(os.path.join(run_dir, name), encoding="utf-8") as f:
        return json.load(f)


def refused(argv, capsys):
    """Run ``argv`` expecting a refusal: ``(exit code, stderr)``, argparse's exit included."""
    from dml.cli import main

    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err.strip()



class TensorBoard:
    """A TensorBoard server on ``logdir`` at a free local port (``with TensorBoard(d) as tb``);
    :meth:`until` retries a request until the server answers it."""

    def __init__(self, logdir):
        self.logdir = logdir

    def __enter__(self):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        tensorboard = os.path.join(os.path.dirname(sys.executable), "tensorboard")
        self.server = subprocess.Popen([tensorboard, "--logdir", self.logdir, "--host",
                                        "127.0.0.1", "--port", str(self.port)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc):
        self.server.terminate()
        self.server.wait(timeout=30)
        return False

    def request(self, path, body=None):
        """GET ``path`` (or POST ``body`` as JSON) and parse the JSON answer."""
        import urllib.request

        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request("http://127.0.0.1:%d%s" % (self.port, path), data=data,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=20) as response:
            return json.loads(response.read())

    def until(self, path, body=None, ready=lambda answer: True, seconds=90):
        """The first answer to ``path`` that is ``ready``, retrying while the server starts."""
        import time

        deadline = time.time() + seconds
        while True:
            try:
                answer = self.request(path, body)
                if ready(answer):
                    return answer
            except OSError:
                if self.server.poll() is not None:
                    raise
            if time.time() > deadline:
                raise AssertionError("TensorBoard did not answer %s in %d s" % (path, seconds))
            time.sleep(0.5)
