#!/usr/bin/env python
"""Screenshot TensorBoard's embedding projector for a run, in headless Chromium.

    python scripts/projector_screenshot.py RUN_DIR [--out doc/projector.png]

Starts TensorBoard on a view of RUN_DIR/logs holding one embedding (the last one logged, or
--tensor NAME) on a free local port, waits until it serves the projector's
data, loads http://127.0.0.1:PORT/#projector in headless Chromium (Debian's package:
`apt-get install chromium`; WebGL through SwiftShader, no GPU or screen needed), saves the
picture and stops TensorBoard. Exit code 2 with one line when the run has no projector data or
Chromium is missing.
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
# quiet on a machine with no internet (see the machine notes): no background connections
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--hide-scrollbars"]


class UserError(Exception):
    pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_chromium(given):
    if given:
        if not (os.path.isfile(given) and os.access(given, os.X_OK)):
            raise UserError("--chromium %s is not an executable file" % given)
        return given
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    raise UserError("no Chromium found (looked for %s): on Debian, apt-get install chromium"
                    % ", ".join(CHROMIUM_NAMES))


def projector_blocks(logs):
    """The ``embeddings { ... }`` entries of the run's projector config, as (name, text)."""
    with open(os.path.join(logs, "projector_config.pbtxt"), encoding="utf-8") as f:
        blocks = ["embeddings {" + b for b in f.read().split("embeddings {") if b.strip()]
    return [(b.split('tensor_name: "', 1)[1].split('"', 1)[0], b) for b in blocks]


def one_embedding_view(logs, tensor, view):
    """``view``: the run's event files and one embedding (symlinked), with a projector config
    listing only it; the projector opens the first embedding it lists."""
    blocks = projector_blocks(logs)
    names = [name for name, _ in blocks]
    if tensor is None:
        tensor = names[-1]
    if tensor not in names:
        raise UserError("--tensor %s: the run logged %s" % (tensor, ", ".join(names)))
    for name in os.listdir(logs):
        if name.startswith("events.out.tfevents") or name == tensor:
            os.symlink(os.path.abspath(os.path.join(logs, name)), os.path.join(view, name))
    with open(os.path.join(view, "projector_config.pbtxt"), "w", encoding="utf-8") as f:
        f.write(dict(blocks)[tensor])
    return tensor


def start_tensorboard(logs, port):
    exe = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    cmd = [exe] if os.path.isfile(exe) else [sys.executable, "-m", "tensorboard.main"]
    return subprocess.Popen(cmd + ["--logdir", logs, "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for_projector(server, port, timeout):
    url = "http://127.0.0.1:%d/data/plugin/projector/info?run=." % port
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                info = json.loads(resp.read())
            if info.get("embeddings"):
                return info["embeddings"]
        except OSError:
            pass
        if server.poll() is not None:
            raise UserError("TensorBoard exited with code %d before serving the projector"
                            % server.returncode)
        if time.time() > deadline:
            raise UserError("TensorBoard served no projector data within %d s" % timeout)
        time.sleep(0.5)


def screenshot(chromium, url, out, width, height, wait_ms):
    tmp = out + ".tmp.png"
    with tempfile.TemporaryDirectory(prefix="dml-chromium-") as profile:
        proc = subprocess.run([chromium] + CHROMIUM_FLAGS + [
            "--user-data-dir=" + profile, "--window-size=%d,%d" % (width, height),
            "--virtual-time-budget=%d" % wait_ms, "--screenshot=" + tmp, url],
            capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 or not os.path.isfile(tmp):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError("Chromium failed (exit %d): %s" % (proc.returncode, tail[:300]))
    os.replace(tmp, out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by dml train")
    parser.add_argument("--out", default=os.path.join("doc", "projector.png"))
    parser.add_argument("--tensor", default=None,
                        help="the embedding to show, e.g. test_embedding_000010 (default: the last)")
    parser.add_argument("--chromium", default=None, help="the browser (default: chromium on PATH)")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--wait-ms", type=int, default=30000,
                        help="virtual time Chromium gives the page to load and draw")
    parser.add_argument("--timeout", type=int, default=120, help="seconds to wait for TensorBoard")
    args = parser.parse_args(argv)
    logs = os.path.join(args.run_dir, "logs")
    try:
        if not os.path.isfile(os.path.join(logs, "projector_config.pbtxt")):
            raise UserError("%s has no projector data (logs/projector_config.pbtxt): pass a "
                            "finished dml run folder" % args.run_dir)
        chromium = find_chromium(args.chromium)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="dml-projector-") as view:
            one_embedding_view(logs, args.tensor, view)
            port = free_port()
            server = start_tensorboard(view, port)
            try:
                embeddings = wait_for_projector(server, port, args.timeout)
                screenshot(chromium, "http://127.0.0.1:%d/#projector" % port, args.out,
                           args.width, args.height, args.wait_ms)
            finally:
                server.terminate()
                server.wait(timeout=30)
    except UserError as err:
        sys.stderr.write("projector_screenshot: error: %s\n" % err)
        return 2
    print("%s: the projector showing %s (%d points)" % (
        args.out, embeddings[0]["tensorName"], embeddings[0]["tensorShape"][0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
