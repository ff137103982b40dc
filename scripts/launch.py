#!/usr/bin/env python
"""Start a distributed MXNet job (parameter-server kvstore): a thin wrapper over ``dmlc_tracker``,
which the mxnet wheel ships.

    python scripts/launch.py --launcher local -n 2 -s 1 -- \
        python -m dml train --method triplet_semihard --dataset digits --kvstore dist_sync

runs a scheduler, ``-s`` servers and ``-n`` workers, each a copy of COMMAND with the environment
MXNet's kvstore reads (DMLC_ROLE, DMLC_PS_ROOT_URI, DMLC_PS_ROOT_PORT, DMLC_NUM_WORKER,
DMLC_NUM_SERVER). ``import mxnet`` turns the scheduler and server copies into those roles; the
workers train. Launchers:

* ``local``: every process on this machine. The launcher waits for the workers, stops the job
  as soon as one fails, and exits with the first failing worker's code (0 when all succeed).
  (dmlc_tracker's own local submitter runs workers in daemon threads and loses their exit codes.)
* ``ssh``: the processes spread round-robin over the hosts of ``-H HOSTFILE`` (one ``host`` or
  ``host:port`` per line), started by passwordless ssh in the same working directory (or
  ``--sync-dst-dir``, rsync'ed first); the scheduler runs here, at ``--host-ip``.
* ``mpi``, ``slurm``, ``sge``: through ``mpirun``, ``srun`` or ``qsub`` (dmlc_tracker's
  submitters; ``-H`` is mpirun's hostfile).

Bad input (no command, no hostfile for ssh, a missing mpirun/srun/qsub) is one line, exit 2.
"""
import argparse
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

LAUNCHERS = ("local", "ssh", "mpi", "slurm", "sge")
SUBMIT_TOOL = {"mpi": "mpirun", "slurm": "srun", "sge": "qsub"}


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, "%s: error: %s (see --help)\n" % (self.prog, message))


def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("%r must be >= 1" % text)
    return value


def build_parser():
    parser = _Parser(prog="launch.py", description=__doc__.split("\n\n")[0],
                     usage="python scripts/launch.py [options] -- COMMAND ...",
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--launcher", choices=LAUNCHERS, default="local",
                        help="how the processes are started")
    parser.add_argument("-n", "--num-workers", type=_positive, required=True,
                        help="training processes (each reads its own shard of the data)")
    parser.add_argument("-s", "--num-servers", type=_positive, default=None,
                        help="parameter servers (default: as many as workers)")
    parser.add_argument("-H", "--hostfile", default=None,
                        help="ssh: the hosts, one per line (host or host:port); mpi: mpirun's "
                        "hostfile")
    parser.add_argument("--host-ip", default=None,
                        help="the address the other processes reach the scheduler at (default: "
                        "127.0.0.1 for local, this machine's address otherwise)")
    parser.add_argument("--sync-dst-dir", default=None,
                        help="ssh: rsync the working directory to this folder on every host first")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="the command every process runs, after --")
    return parser


def check_args(args):
    """One-line messages for what cannot run (returned, not raised)."""
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        return None, "no command: put it after --, e.g. -- python -m dml train --kvstore dist_sync"
    if args.launcher == "ssh" and args.hostfile is None:
        return None, "--launcher ssh needs -H HOSTFILE (one host per line)"
    if args.hostfile is not None:
        if not os.path.isfile(args.hostfile):
            return None, "-H %s: no such file" % args.hostfile
        with open(args.hostfile, encoding="utf-8") as f:
            if not any(line.strip() for line in f):
                return None, "-H %s lists no host" % args.hostfile
    tool = SUBMIT_TOOL.get(args.launcher)
    if tool and shutil.which(tool) is None:
        return None, "--launcher %s needs %s on the PATH" % (args.launcher, tool)
    if args.launcher == "local" and shutil.which(command[0]) is None:
        return None, "%s: no such program (the command after -- must be one this machine runs)" \
            % command[0]
    kvstore = _dml_train_kvstore(command)
    if kvstore is not None and args.num_workers > 1 and not kvstore.startswith("dist"):
        return None, ("-n %d workers of dml train without --kvstore dist_sync (or dist_device_sync, "
                      "dist_async) would train %d independent runs: add --kvstore dist_sync to the "
                      "command" % (args.num_workers, args.num_workers))
    return command, None


def _dml_train_kvstore(command):
    """The --kvstore of a ``dml train`` command ("" when it has none), or None for any other
    command."""
    words = [os.path.basename(w) for w in command]
    if "train" not in words or not ("dml" in words or "dml.cli" in words):
        return None
    for i, word in enumerate(command):
        if word == "--kvstore" and i + 1 < len(command):
            return command[i + 1]
        if word.startswith("--kvstore="):
            return word.split("=", 1)[1]
    return ""


def free_port(host):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _start(command, env, role, task_id=None):
    env = dict(env, DMLC_ROLE=role)
    if task_id is not None:
        env["DMLC_TASK_ID"] = str(task_id)
    return subprocess.Popen(command, env=env, start_new_session=True)


def _stop(procs, sig=signal.SIGTERM):
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass


def run_local(command, num_workers, num_servers, host_ip=None, poll=0.2, linger=60.0):
    """Scheduler, servers and workers as child processes of this one -> the job's exit code."""
    host_ip = host_ip or "127.0.0.1"
    env = dict(os.environ, DMLC_PS_ROOT_URI=host_ip, DMLC_PS_ROOT_PORT=str(free_port(host_ip)),
               DMLC_NUM_WORKER=str(num_workers), DMLC_NUM_SERVER=str(num_servers),
               DMLC_JOB_CLUSTER="local")
    helpers = [_start(command, env, "scheduler")]
    helpers += [_start(command, env, "server", num_workers + i) for i in range(num_servers)]
    workers = [_start(command, env, "worker", i) for i in range(num_workers)]
    code = 0
    try:
        while True:
            codes = [w.poll() for w in workers]
            failed = [c for c in codes if c not in (None, 0)]
            if failed:
                code = failed[0]
                sys.stderr.write("launch.py: a worker exited with code %d: stopping the job\n"
                                 % code)
                break
            dead = [h.poll() for h in helpers if h.poll() not in (None, 0)]
            if dead and None in codes:
                # a command that fails at once fails in every role: give the workers a moment
                # to report their own code, which is the job's (the scheduler may die first)
                grace = time.time() + 2.0
                while time.time() < grace and None in [w.poll() for w in workers]:
                    time.sleep(poll)
                failed = [w.poll() for w in workers if w.poll() not in (None, 0)]
                if failed:
                    continue
                code = 1
                sys.stderr.write("launch.py: a scheduler or server exited with code %d: "
                                 "stopping the job\n" % dead[0])
                break
            if None not in codes:
                break
            time.sleep(poll)
        if code == 0:  # the scheduler and servers stop once every worker has finished
            deadline = time.time() + linger
            while time.time() < deadline and any(h.poll() is None for h in helpers):
                time.sleep(poll)
    except KeyboardInterrupt:  # Ctrl-C: the workers checkpoint and stop (dml train's handler)
        _stop(workers, signal.SIGINT)
        for w in workers:
            try:
                w.wait(timeout=linger)
            except subprocess.TimeoutExpired:
                pass
        code = 130
    finally:
        _stop(workers + helpers)
        for proc in workers + helpers:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _stop([proc], signal.SIGKILL)
    return code


def run_tracker(args, command):
    """ssh, mpi, slurm, sge: dmlc_tracker's own submitters, with its option parser."""
    import threading

    from dmlc_tracker import mpi, opts, sge, slurm, ssh

    if not hasattr(threading.Thread, "isAlive"):  # dmlc_tracker calls it; gone since Python 3.9
        threading.Thread.isAlive = threading.Thread.is_alive

    argv = ["--cluster", args.launcher, "--num-workers", str(args.num_workers),
            "--num-servers", str(args.num_servers)]
    if args.hostfile:
        argv += ["--host-file", args.hostfile]
    if args.host_ip:
        argv += ["--host-ip", args.host_ip]
    if args.sync_dst_dir:
        argv += ["--sync-dst-dir", args.sync_dst_dir]
    # the submitters join the command with spaces and hand it to a shell (ssh: inside '...')
    tracker_args = opts.get_opts(argv + ["--"] + [shlex.quote(c) for c in command])
    {"ssh": ssh, "mpi": mpi, "slurm": slurm, "sge": sge}[args.launcher].submit(tracker_args)
    return 0


def _terminated(signum, frame):
    raise SystemExit(128 + signum)  # run_local's finally stops the job's processes


def main(argv=None):
    signal.signal(signal.SIGTERM, _terminated)
    args = build_parser().parse_args(argv)
    command, problem = check_args(args)
    if problem:
        sys.stderr.write("launch.py: error: %s\n" % problem)
        return 2
    if args.num_servers is None:
        args.num_servers = args.num_workers
    if args.launcher == "local":
        return run_local(command, args.num_workers, args.num_servers, args.host_ip)
    return run_tracker(args, command)


if __name__ == "__main__":
    sys.exit(main())
