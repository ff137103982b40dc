"""The package's layers (issue 27): every import of one dml module by another, at the top of a
file or inside a function, goes to a module of the same layer or of a layer below, and no chain
of imports leads from a module back to itself. A new module must be given its layer here."""
import ast
import os
import textwrap

import pytest

from runhelpers import ROOT

# Lowest first. A module may import modules of its own layer and of the layers above it in this
# list (never below it); "dml.x.*" names every module of the subpackage dml.x.
LAYERS = [
    ("base: errors, version, environment, names, defaults, the distances, the loop's events",
     ["dml.errors", "dml.version", "dml.environ", "dml.registry", "dml.argtypes",
      "dml.distances", "dml.events"]),
    ("data, networks and the host operators",
     ["dml.data", "dml.data.*", "dml.nets", "dml.ops", "dml.ops.*", "dml.parallel"]),
    ("losses and miners", ["dml.losses", "dml.losses.*", "dml.miners"]),
    ("evaluation and devices",
     ["dml.evaluation", "dml.baselines", "dml.health", "dml.index", "dml.gpus"]),
    ("runs: the run folder, its figures, comparing runs",
     ["dml.runs", "dml.runs.*", "dml.compare", "dml.hparams", "dml.plots"]),
    ("methods and the checked run configuration", ["dml.methods", "dml.config"]),
    ("training: the loop, its hooks, devices and the jobs",
     ["dml.train", "dml.train.*", "dml.hooks", "dml.engine"]),
    ("serving: a trained run, its index, its export",
     ["dml.serve", "dml.serve.*", "dml.export"]),
    ("commands", ["dml", "dml.__main__", "dml.cli", "dml.cli.*", "dml.doctor", "dml.bench",
                  "dml.bench_serve"]),
]


def module_names(package_dir):
    """``{module name: file}`` for every .py file under ``package_dir`` (a package ``dml``)."""
    root = os.path.dirname(package_dir)
    found = {}
    for folder, _, files in os.walk(package_dir):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                module = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                found[module[:-len(".__init__")] if module.endswith(".__init__") else module] = path
    return found


def import_graph(package_dir):
    """``{module: set of the package's modules it imports}``, every import statement counted:
    at the top, inside functions, under ``if``. ``from . import x`` counts x when it is a module,
    else the package; ``from .m import name`` counts m."""
    modules = module_names(package_dir)
    top = os.path.basename(package_dir)

    def known(name):
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        return name if name in modules else None

    graph = {}
    for module, path in modules.items():
        is_package = path.endswith("__init__.py")
        here = module.split(".") if is_package else module.split(".")[:-1]
        targets = set()
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[:len(here) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                names = [target + "." + alias.name if target + "." + alias.name in modules
                         else target for alias in node.names]
            else:
                continue
            for name in names:
                if name == top or name.startswith(top + "."):
                    target = known(name)
                    if target and target != module:
                        targets.add(target)
        graph[module] = targets
    return graph


def cycles(graph):
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layer_of(module, layers):
    """The index of ``module``'s layer in ``layers`` (an exact name first, then ``pkg.*``)."""
    for number, (_, members) in enumerate(layers):
        if module in members:
            return number
    for number, (_, members) in enumerate(layers):
        if any(m.endswith(".*") and module.startswith(m[:-1]) for m in members):
            return number
    return None


def upward_imports(graph, layers):
    """``(importer, imported)`` where the imported module sits in a higher layer."""
    return sorted((a, b) for a, targets in graph.items() for b in targets
                  if layer_of(b, layers) > layer_of(a, layers))


PACKAGE = os.path.join(ROOT, "dml")


def test_dml_has_no_import_cycle():
    assert cycles(import_graph(PACKAGE)) == []


def test_every_module_has_a_layer_and_imports_only_from_its_own_or_below():
    graph = import_graph(PACKAGE)
    assert [m for m in sorted(graph) if layer_of(m, LAYERS) is None] == []
    assert upward_imports(graph, LAYERS) == []


def _write(root, files):
    for name, text in files.items():
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(textwrap.dedent(text))


def test_the_checks_see_cycles_hidden_inside_functions_and_upward_imports(tmp_path):
    package = str(tmp_path / "pkg")
    _write(package, {
        "__init__.py": "from .errors import Oops\n",
        "errors.py": "class Oops(Exception):\n    pass\n",
        "low.py": "from .errors import Oops\n\ndef f():\n    from .high import g\n    return g\n",
        "high.py": "from . import low\nfrom .sub import leaf\n",
        "sub/__init__.py": "",
        "sub/leaf.py": "import pkg.errors\n\ndef h():\n    if True:\n        from .. import high\n",
    })
    graph = import_graph(package)
    assert graph["pkg.low"] == {"pkg.errors", "pkg.high"}
    assert graph["pkg.high"] == {"pkg.low", "pkg.sub.leaf"}
    assert graph["pkg.sub.leaf"] == {"pkg.errors", "pkg.high"}
    assert cycles(graph) == [["pkg.high", "pkg.low", "pkg.sub.leaf"]]
    layers = [("base", ["pkg.errors"]), ("middle", ["pkg.low", "pkg.sub.*"]),
              ("top", ["pkg", "pkg.high"])]
    assert upward_imports(graph, layers) == [("pkg.low", "pkg.high"),
                                             ("pkg.sub.leaf", "pkg.high")]
    assert layer_of("pkg.sub", layers) is None  # "pkg.sub.*" names the modules under it only


@pytest.mark.parametrize("name", ["dml.DmlError", "dml.WriteFailed"])
def test_the_errors_keep_their_public_names(name):
    import pickle

    import dml

    error = getattr(dml, name.split(".")[1])
    assert "%s.%s" % (error.__module__, error.__name__) == name
    assert type(pickle.loads(pickle.dumps(error("x")))) is error


def test_the_reference_pages_layout_is_the_tree():
    """doc/reference.md's layout is what scripts/layout.py generates from this tree (run it with
    --write after adding, moving or redescribing a module)."""
    import subprocess
    import sys

    generated = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "layout.py")],
                               capture_output=True, text=True, check=True).stdout
    text = open(os.path.join(ROOT, "doc", "reference.md"), encoding="utf-8").read()
    start = text.index("## Layout\n")
    assert generated in text[start:]


def test_the_registry_and_the_methods_table_name_the_same_things():
    """dml.registry (no MXNet: the CLI checks names before MXNet loads) and dml.methods (the
    classes) list the same methods, in the same order, with the same properties."""
    from dml import methods, registry

    table = methods.METHODS
    assert tuple(table) == registry.METHODS
    assert tuple(m for m in table if table[m].pk_batches) == registry.PK_METHODS
    assert {m: table[m].selectors for m in table if table[m].selectors} == \
        registry.METHOD_SELECTORS
    assert tuple(m for m in table if getattr(table[m], "takes_miner", False)) == \
        registry.MINER_METHODS
    assert tuple(m for m in table if isinstance(table[m], methods.ProxyMethod)) == \
        registry.PROXY_METHODS
    assert tuple(methods.MINER_CLASSES) == registry.MINERS
    assert tuple(m for m in table if getattr(table[m], "takes_memory", False)) == \
        registry.MEMORY_METHODS


def test_registries_return_by_name_and_list_the_valid_names_of_an_unknown_one():
    from dml.methods import get_method, get_miner
    from dml.miners import MultiSimilarityMiner

    assert get_method("triplet_semihard").pk_batches
    assert isinstance(get_miner("multi_similarity"), MultiSimilarityMiner)
    assert get_miner("none") is None and get_miner(None) is None
    with pytest.raises(ValueError, match="unknown method 'tripletsemihard': choose one of "
                                         "siamese, triplet, triplet_semihard, "):
        get_method("tripletsemihard")
    with pytest.raises(ValueError, match="unknown miner 'hard': choose one of none, "
                                         "multi_similarity, distance_weighted"):
        get_miner("hard")


# Every name the modules that became packages or moved had before (at fde1760), which their old
# import paths must still give: the README's and doc/'s paths, and what users' code imported.
OLD_NAMES = {
    "dml.engine": """
        CPU_SYNC_NOTE DIST_ENV Job Workers _GATHER_KEYS _RUN_NAME_BYTES _RUN_NAME_KEY _epoch_summary
        _resume_point _some _warn_repeats build_loss build_net build_train_loader build_trainer
        check_embeddings check_same_images cpu_engine_threads default_hooks embed_and_score
        eval_loader evaluate_net evaluate_run fit health_monitor learning_rate_at load_net
        make_contexts make_kvstore net_contexts net_options open_run prepare prepare_training
        reevaluate reported_checkpoint resume_state run run_evaluation score_for_run seed_everything
        selection_split split_batch train_job train_step validation_loss validation_splits""",
    "dml.hooks": """
        Hooks NonFiniteLoss RunRecorder StopGuard TensorBoardLogger TrainState TrainingInterrupted
        _NullWriter _STOP_SIGNALS non_finite_parameters projector_sample rng_state set_rng_state
        tsv_cell warn_below_baselines""",
    "dml.serve": """
        Gallery INDEX_FILE INDEX_FORMAT ITEMS_FILE ITEMS_HEADER ImageSource Item LoadedRun META_FILE
        _dataset_items _image_list _items_csv _read_list_file _walk_images build_index
        check_new_folder check_query_gallery_classes check_writable collect embed_items
        evaluate_query_gallery file_sha256 input_size labelled_items load_run open_index
        query_gallery_metrics result_rows run_for_index save_npy save_text search write_embeddings""",
    "dml.runs": """
        RunDir _EXPORT_PARAMS _FILE_MODE _LOW_SPACE _NET_PARAMS _STATE _exportable _link _listdir
        _remove_quietly _save_npz _umask checkpoint_id complete_checkpoints create_run_dir
        evaluated_images find_runs partial_files prune_checkpoints read_json read_run_json
        remove_partial_files resolve_checkpoint settle temporary_file wait_for_mxnet write_atomic
        write_failure write_json""",
    "dml.export": """
        L2_EPS _require _tidy export_onnx exportable_symbol onnx_embed""",
    "dml.losses.kernels": """
        COSINE DISTANCE_CODES EUCLIDEAN SQUARED _DISTANCES _derivative _finish_distances _jit _pjit
        _positives _random_hard_anchor _sorted_reach _sparse_grad _symmetrize batch_hard
        contrastive_all distance_grad distances pair_offsets positive_pairs random_negatives
        semihard_tf triplet_sums triplet_sums_grad""",
    "dml.losses.simkernels": """
        _jit _kept _pjit _symmetrize_tiles _zero_row circle gap_sums lifted margin_all ms_cuts
        multi_similarity npairs ntxent supcon symmetrize""",
    "dml.losses.simop": """
        DEFAULTS KINDS _NO_MINING _SimilarityOp _SimilarityProp _codes _cuts _nan_result
        _npairs_roles _params _score host_similarity memory_loss similarity_loss warm_up""",
    "dml.losses.batch": """
        HostLossProp KINDS _BatchLossOp _BatchLossProp _LOSSES _NoTuples _all_triplets _batch_hard
        _check_kind _contrastive_all_positive _contrastive_hard_negative _degenerate _drain_engine
        _pair_terms _selector _semihard_tf batch_loss host_loss warm_up""",
    "dml.losses.mining": """
        NEGATIVE_SELECTORS NoTupleWarnings _counters anchor_negative_mask anchor_positive_mask
        choose_negatives closest_pairs label_codes no_tuple_warnings select_pairs""",
    "dml.losses.indices": """
        GraphOf _as_arrays _empty_triplets as_index_arrays pairs_to_triplets triplets_to_pairs""",
    "dml.losses.references": """
        HostScore contrastive_reference_loss host_array recorded reference_masks""",
    "dml.losses.distance": """
        check_distance pair_distance pairwise_distance""",
    "dml.losses.base": """
        BaseLoss GivenOrMined MinedTuples _BATCH_IO _instances batch_loss_io check_margin
        propagate_non_finite take_pairs""",
    "dml.methods": """
        METHODS MINERS MINER_CLASSES MarginSoftmaxMethod Method MinedLoss ModelLoss PairLossMethod
        ParallelStep ProxyMethod SiameseMethod SoftmaxMethod TripletMethod _PlainBatches
        _TupleMethod _backward_device _margin_kwargs _recorded _unknown gather_embeddings get_method
        get_miner in_threads""",
}


def test_the_old_import_paths_give_every_name_they_had():
    import importlib

    missing = ["%s.%s" % (module, name) for module, names in OLD_NAMES.items()
               for name in names.split() if not hasattr(importlib.import_module(module), name)]
    assert missing == []


def test_a_moved_module_is_the_same_module_under_its_old_path():
    import importlib

    import dml.losses.batch
    import dml.ops.batch
    from dml.losses import mining

    assert dml.losses.batch is dml.ops.batch
    assert mining is importlib.import_module("dml.ops.mining")
