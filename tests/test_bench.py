"""python -m dml.bench: the loss and training benchmarks print their tables, and the naive
B x B x B formulations they compare against compute the same losses."""
import os
import subprocess
import sys

import mxnet as mx
import pytest

from dml.bench import _embeddings, _loss, naive_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench(args, timeout=600):
    return subprocess.run([sys.executable, "-m", "dml.bench"] + args, capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout)


@pytest.mark.parametrize("name", ["triplet_semihard", "triplet_batch_all"])
@pytest.mark.parametrize("samples_per_class", [2, 4, 8])
def test_naive_formulations_compute_the_same_loss(name, samples_per_class):
    x, labels = _embeddings(48, 8, samples_per_class, seed=samples_per_class)
    naive = naive_loss(name)()
    naive.hybridize()
    want = _loss(name)(mx.nd.array(x), mx.nd.array(labels)).asscalar()
    assert naive(mx.nd.array(x), mx.nd.array(labels)).asscalar() == pytest.approx(want, rel=1e-5)


def test_losses_table():
    proc = bench(["losses", "--batch-sizes", "32,64", "--repeats", "1", "--samples-per-class", "8",
                  "--losses", "triplet_semihard,triplet_batch_hard"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("peak RSS of a process that only imports mxnet and dml: ")
    assert lines[1].split() == ["loss", "B", "ms", "peak", "MB", "naive", "ms", "naive", "MB",
                                "x", "floor"]
    rows = [line.split() for line in lines[3:]]
    assert [r[:2] for r in rows] == [["triplet_semihard", "32"], ["triplet_semihard", "64"],
                                     ["triplet_batch_hard", "32"], ["triplet_batch_hard", "64"]]
    for r in rows:
        assert float(r[2]) > 0 and float(r[3]) > 100  # ms, and a whole process's MB
    assert rows[0][4] != "-" and rows[2][4] == "-"  # semi-hard has a naive form, batch-hard not


@pytest.mark.parametrize("args,message", [
    (["losses", "--losses", "quadruplet"], "unknown 'quadruplet': choose from"),
    (["losses", "--batch-sizes", "30", "--samples-per-class", "16"],
     "--batch-sizes 30: a batch must hold at least two classes of --samples-per-class 16"),
])
def test_losses_bad_input(args, message):
    proc = bench(args)
    assert proc.returncode == 2 and message in proc.stderr


def test_train_table():
    proc = bench(["train", "--methods", "softmax,triplet_batch_hard", "--steps", "1",
                  "--repeats", "1", "--backbone", "cifar_resnet20_v1", "--n-classes", "4",
                  "--n-samples", "4", "--num-workers", "0"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    header, *rows = proc.stdout.strip().splitlines()
    assert header.split()[:3] == ["method", "batch", "images/s"]
    assert [r.split()[:2] for r in rows] == [["softmax", "16"], ["triplet_batch_hard", "16"]]
    for r in rows:
        assert float(r.split()[2]) > 0 and r.split()[-1].endswith("%")


def test_losses_table_times_the_fused_similarity_losses():
    proc = bench(["losses", "--batch-sizes", "64", "--repeats", "1", "--samples-per-class", "8",
                  "--losses", "ntxent,multi_similarity+miner"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split() for line in proc.stdout.strip().splitlines()[3:]]
    assert [r[:2] for r in rows] == [["ntxent", "64"], ["multi_similarity+miner", "64"]]
    assert all(float(r[2]) > 0 and float(r[-1]) > 0 for r in rows)


def test_memory_table():
    proc = bench(["memory", "--batch", "16", "--memory-sizes", "32,64", "--repeats", "1",
                  "--backbone", "cifar_resnet20_v1", "--dim", "8"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("one cifar_resnet20_v1 step, batch 16 of 32 x 32 images, 8-D: ")
    rows = [line.split() for line in lines[3:]]
    assert [r[:2] for r in rows] == [["multi_similarity+miner", "32"],
                                     ["multi_similarity+miner", "64"], ["supcon", "32"],
                                     ["supcon", "64"], ["contrastive/hard_negative", "32"],
                                     ["contrastive/hard_negative", "64"],
                                     ["contrastive/all_positive", "32"],
                                     ["contrastive/all_positive", "64"]]
    assert all(float(r[2]) > 0 and r[3].endswith("%") for r in rows)


def test_checks_table():
    """The second load decodes nothing; the table's shape."""
    proc = bench(["checks", "--images", "40", "--side", "64", "--image-size", "32"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "40 JPEGs of 64 x 48, checked at 32 px (centre crop)"
    rows = [line.split() for line in lines[3:]]
    assert [r[:3] for r in rows] == [["first", "40", "40"], ["second", "40", "0"]]
    assert all(float(r[3]) >= 0 for r in rows)


@pytest.mark.parametrize("argv,message", [
    (["losses", "--batch-sizes", "abc"], "argument --batch-sizes: 'abc' is not a whole number"),
    (["losses", "--batch-sizes", "0"], "argument --batch-sizes: '0' must be between 2 and"),
    (["losses", "--batch-sizes", "-8"], "argument --batch-sizes: '-8' must be between 2 and"),
    (["losses", "--repeats", "0"], "argument --repeats: '0' must be between 1 and 1000"),
    (["losses", "--batch-sizes", "100"], "--batch-sizes 100: a batch must hold at least two "
                                         "classes of --samples-per-class 16"),
    (["serve", "--gallery", "0"], "argument --gallery: '0' must be between 1 and"),
    (["serve", "--dim", "0"], "argument --dim: '0' must be between 1 and 4096"),
    (["serve", "--kinds", "bogus"], "argument --kinds: unknown 'bogus': choose from exact"),
    (["serve", "--gallery", "100", "--clusters", "500", "--skip-startup", "--repeats", "1"],
     "--clusters 500 is more than the --gallery 100 vectors"),
    (["checks", "--side", "0"], "argument --side: '0' must be between 16 and 8192"),
    (["train", "--methods", "bogus"], "argument --methods: unknown 'bogus': choose from"),
    (["train", "--steps", "0"], "argument --steps: '0' must be between 1 and 10000"),
    (["train", "--n-classes", "0"], "argument --n-classes: '0' must be between 2 and 4096"),
    (["memory", "--memory-sizes", "-5"], "argument --memory-sizes: '-5' must be between 2 and"),
    (["memory", "--memory-sizes", "64"], "--memory-sizes 64 is smaller than --batch 128"),
])
def test_bad_bench_settings_are_one_line_exit_2(argv, message):
    proc = subprocess.run([sys.executable, "-m", "dml.bench"] + argv, capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert lines[0].startswith("python -m dml.bench")


def test_the_bench_help_ends_its_sentences():
    proc = subprocess.run([sys.executable, "-m", "dml.bench", "--help"], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0
    description = proc.stdout.split("\n\n")[1].replace("\n", " ").strip()
    assert description.endswith("."), description


def test_warm_up_waits_for_steady_step_times():
    from dml.bench import _warm_up

    durations = iter([10.0, 5.0, 1.0, 1.02, 1.01, 1.0])  # what each call takes, on a fake clock
    now, calls = [0.0], []

    def step():
        calls.append(1)
        now[0] += next(durations)

    _warm_up(step, clock=lambda: now[0])
    assert len(calls) == 4  # 10, 5, 1, then 1.02: within 15% of the one before
    durations, calls = iter([10.0, 1.0, 2.0, 1.0, 1.5, 1.0, 1.3, 1.0, 1.2, 1.0, 1.0, 1.0]), []
    _warm_up(step, rounds=8, clock=lambda: now[0])
    assert len(calls) == 8  # never steady: stops at rounds
