"""The evaluation protocols over a loaded dataset: the unseen-class split (``--split unseen``),
validation classes held out of training (``--val-classes``) and the check that a dataset holds
the classes a run was trained on."""
import dataclasses

import numpy as np

from ..errors import DmlError
from ..registry import SPLITS

def class_subset(dataset, classes):
    """The samples of ``dataset`` whose label is in ``classes`` (labels unchanged)."""
    return dataset.subset(np.flatnonzero(np.isin(dataset.labels, np.asarray(classes))))


MIN_UNSEEN_CLASSES = 4


def unseen_class_splits(splits):
    """The unseen-class protocol: train on the first half of the classes (label order, ``n // 2``
    of ``n``) and evaluate on the test images of the other half, which training never sees.
    ``knn_accuracy`` then votes with the training-split images of the unseen classes. Labels keep
    their values, so class names stay right. A dataset whose test classes differ from its
    training classes already (the benchmarks, a class-disjoint folder) is refused: its test
    split is the unseen-class protocol."""
    n = splits.num_classes
    if splits.train_classes is not None or splits.gallery is not None:
        raise DmlError("split=unseen halves the classes of a dataset whose train and test splits "
                       "share them; %s is class-disjoint already (it trains on %d classes and "
                       "tests on %d others): use split=test" % (
                           splits.name, len(splits.train_classes or []),
                           len(splits.eval_classes or [])))
    if n < MIN_UNSEEN_CLASSES:
        raise DmlError("split=unseen needs a dataset with at least %d classes (half to train on, "
                       "half to evaluate on); %s has %d" % (MIN_UNSEEN_CLASSES, splits.name, n))
    seen, unseen = list(range(n // 2)), list(range(n // 2, n))
    out = dataclasses.replace(
        splits, train=class_subset(splits.train, seen), test=class_subset(splits.test, unseen),
        reference=class_subset(splits.train, unseen), split="unseen", train_classes=seen,
        eval_classes=unseen)
    for what, dataset, classes in (("training", out.train, seen), ("test", out.test, unseen),
                                   ("training", out.reference, unseen)):
        if len(np.unique(dataset.labels)) < 2:
            raise DmlError("split=unseen: the %s split of %s holds fewer than 2 of the classes "
                           "%s to %s" % (what, splits.name, splits.class_names[classes[0]],
                                         splits.class_names[classes[-1]]))
    return out


VAL_CLASSES_SEED = 0  # the held-out classes do not depend on --seed: every seed selects alike


def count_val_classes(val_classes, num_train_classes):
    """``val_classes`` (a whole number of classes, or a fraction in (0, 1)) as a count."""
    if val_classes is None or val_classes == 0:
        return 0
    if 0 < val_classes < 1:
        return int(round(val_classes * num_train_classes))
    if val_classes != int(val_classes) or val_classes < 0:
        raise DmlError("val_classes=%g must be a whole number of classes or a fraction between "
                       "0 and 1" % val_classes)
    return int(val_classes)


def hold_out_classes(splits, val_classes):
    """``splits`` with ``val_classes`` of its training classes (a count, or a fraction of them)
    held out: their training images become ``splits.val``, the validation set that model
    selection (``eval_period``, params/best/) scores, and training never sees them. The classes
    are a fixed draw (seed 0, whatever the run's seed) among the training classes, never a test
    class; at least 2 must remain on each side."""
    present = sorted(int(c) for c in np.unique(splits.train.labels))
    count = count_val_classes(val_classes, len(present))
    if not val_classes:
        return splits
    if count < 2 or len(present) - count < 2:
        raise DmlError("val_classes=%g would hold out %d of the %d training classes of %s: "
                       "validation and training each need at least 2 (choose between 2 and %d)"
                       % (val_classes, count, len(present), splits.name, len(present) - 2))
    rng = np.random.default_rng(VAL_CLASSES_SEED)
    held = sorted(int(c) for c in rng.permutation(present)[:count])
    kept = [c for c in present if c not in set(held)]
    return dataclasses.replace(splits, train=class_subset(splits.train, kept),
                               val=class_subset(splits.train, held), val_classes=held,
                               train_classes=kept)


def check_same_classes(names, splits, run_dir, data_root=None):
    """The dataset must hold the classes a run was trained with (``names``, config.json's
    class_names), in the same order: labels are indices into that list."""
    if names is None or list(names) == list(splits.class_names):
        return
    added = sorted(set(splits.class_names) - set(names))
    missing = sorted(set(names) - set(splits.class_names))
    detail = "; ".join(part for part in (
        "%d new (%s)" % (len(added), ", ".join(added[:3])) if added else "",
        "%d missing (%s)" % (len(missing), ", ".join(missing[:3])) if missing else "",
    ) if part) or "the same names in another order"
    raise DmlError("the %s data at %s does not hold the %d classes %s was trained on: %s; point "
                   "`data_root` at the run's data" % (splits.name, data_root or "the default folder",
                                                      len(names), run_dir, detail))


def apply_split(splits, split):
    """``splits`` as the ``--split`` protocol sees them: ``test`` (every class, the test split)
    or ``unseen`` (:func:`unseen_class_splits`)."""
    if split == "test":
        return splits
    if split == "unseen":
        return unseen_class_splits(splits)
    raise DmlError("unknown split %r: choose one of %s" % (split, ", ".join(SPLITS)))
