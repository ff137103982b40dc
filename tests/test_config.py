"""One place for options (dml.config): a run's options checked with their parameter names (the
CLI only parses and shows them as flags), a resumed run's, the checks that need the job's
workers, and configs derived, never changed in place."""
import dataclasses
import types

import pytest

from dml import DmlError
from dml.config import RunConfig, check_workers, from_options, resumed


def test_a_new_runs_options_take_the_defaults_and_name_what_does_not_apply():
    cfg = from_options({"method": "multi_similarity", "dataset": "digits", "epochs": 3,
                        "margin": None})
    assert (cfg.method, cfg.epochs, cfg.margin, cfg.gpus) == ("multi_similarity", 3, None, [])
    assert from_options({}, default_gpus=lambda: [0, 1]).gpus == [0, 1]
    assert from_options({"val_classes": 2}).eval_period == 1
    assert from_options({"data_root": "rel"}).data_root.startswith("/")
    for options, message in [
            ({"method": "nope"}, "unknown method 'nope': choose one of siamese, "),
            ({"method": "softmax", "n_classes": 4}, "softmax takes `batch_size`; `n_classes` "
                                                    "and `n_samples` apply"),
            ({"batch_size": 8}, "triplet_semihard batches `n_classes` x `n_samples` images"),
            ({"selector": "all"}, "`selector` applies to online_triplet and online_contrastive"),
            ({"scale": 2.0}, "`scale` applies to arcface"),
            ({"miner": "multi_similarity"}, "`miner` applies to "),
            ({"loss_lr_mult": 2.0}, "`loss_lr_mult` applies to the proxy methods"),
            ({"method": "multi_similarity", "margin": 0.3}, "`margin` does not apply to "
                                                             "multi_similarity"),
            ({"method": "multi_similarity", "miner": "distance_weighted"},
             "miner=distance_weighted does not apply to multi_similarity")]:
        with pytest.raises(DmlError, match=message.replace("(", r"\(")):
            from_options(options)


def test_the_cli_shows_the_parameter_names_as_flags(tmp_path, capsys):
    from dml.cli import main

    code = main(["train", "--batch-size", "8", "--output-root", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err == ("dml train: error: triplet_semihard batches --n-classes x "
                                 "--n-samples images; --batch-size applies to siamese, triplet "
                                 "and softmax")


def test_a_resumed_run_keeps_its_settings_but_where_and_how_long(tmp_path):
    from dml.runs import RunDir

    run = RunDir.create(str(tmp_path), "digits", "triplet_semihard")
    run.write(RunDir.CONFIG, RunConfig(epochs=2, cpus=2).to_dict())
    cfg = resumed(run.path, {"epochs": 5, "gpus": [0], "resume": run.path})
    assert (cfg.epochs, cfg.gpus, cfg.cpus) == (5, [0], 0)
    with pytest.raises(DmlError, match=r"resume=.*: the run has `lr` 0.001; a resumed run keeps "
                                       r"its settings \(only `epochs`, `gpus`"):
        resumed(run.path, {"lr": 0.1})
    with pytest.raises(DmlError, match="is a triplet_semihard run, not softmax"):
        resumed(run.path, {"method": "softmax"})
    with pytest.raises(DmlError, match="resume=.*gone: no such run folder"):
        resumed(str(tmp_path / "gone"), {})


def test_the_checks_that_need_the_workers():
    splits = types.SimpleNamespace(train=list(range(40)))
    cfg = RunConfig(n_classes=4, n_samples=4, memory_size=32, method="multi_similarity")
    check_workers(cfg, splits, 2)
    with pytest.raises(DmlError, match="memory_size=32 is smaller than the 3 workers' batches "
                                       r"\(48 images\)"):
        check_workers(cfg, splits, 3)
    with pytest.raises(DmlError, match="4 workers need 64 training images for a batch each; "
                                       "digits has 40"):
        check_workers(dataclasses.replace(cfg, memory_size=0), splits, 4)


def test_prepare_derives_the_shrunk_batch_and_leaves_the_callers_config_alone():
    from dml.engine import prepare

    cfg = from_options({"split": "unseen", "n_classes": None, "epochs": 1, "embedding_dim": 8,
                        "num_workers": 0})
    assert cfg.n_classes == 10
    job = prepare(cfg, fit_classes=True)
    assert cfg.n_classes == 10 and job.cfg.n_classes == 5  # digits' 5 training classes
    assert dataclasses.replace(job.cfg, n_classes=10) == cfg
