"""The one list of names a user can type, and the methods' defaults: everything else (the CLI's
choices, the methods table, the losses' checks, the benchmarks) derives from here. No MXNet
import, so the CLI can validate before MXNet loads.
"""

METHODS = (
    "siamese",
    "triplet",
    "triplet_semihard",
    "triplet_batch_hard",
    "triplet_batch_all",
    "online_contrastive",
    "online_triplet",
    "softmax",
    "arcface",
    "cosface",
    "sphereface",
    "multi_similarity",
    "circle",
    "supcon",
    "lifted",
    "npairs",
    "margin",
    "proxy_anchor",
    "proxy_nca",
    "normalized_softmax",
    "soft_triple",
    "subcenter_arcface",
)
DATASETS = ("digits", "glyphs", "cifar10", "cifar100", "mnist", "fashion-mnist", "folder",
            "cub200", "cars196", "sop", "inshop")
# the zero-shot retrieval benchmarks, read in their official layouts (dml.data.benchmarks)
BENCHMARKS = ("cub200", "cars196", "sop", "inshop")
# --augment: the training augmentation (dml.data.transforms)
AUGMENTS = ("none", "crop", "crop-flip", "resized-crop-flip")
SPLITS = ("test", "unseen")
STEMS = ("imagenet", "small")
LR_SCHEDULES = ("step", "cosine")  # --stem (and "auto": dml.config.resolve_stem)
DISTANCES = ("euclidean", "squared", "cosine")
KVSTORES = ("local", "device", "dist_sync", "dist_device_sync", "dist_async")
ONLINE_TRIPLET_SELECTORS = ("all", "hardest", "random_hard", "semihard")
PAIR_SELECTORS = ("all_positive", "hard_negative")
# --selector of each method that takes one, the default first
METHOD_SELECTORS = {
    "online_contrastive": ("hard_negative", "all_positive"),
    "online_triplet": ("random_hard", "all", "hardest", "semihard"),
}
MARGIN_HEAD_METHODS = ("arcface", "cosface", "sphereface", "subcenter_arcface")  # take --scale
# the online-mining methods: P x K batches, one fused batch loss
PK_METHODS = ("triplet_semihard", "triplet_batch_hard", "triplet_batch_all", "online_contrastive",
              "online_triplet", "multi_similarity", "circle", "supcon", "lifted", "npairs",
              "margin")
# --miner: the miners of each method that takes one, its default first (pair miners for the pair
# losses, a triplet miner for the margin loss)
MINERS = ("none", "multi_similarity", "distance_weighted")
METHOD_MINERS = {
    "multi_similarity": ("multi_similarity", "none"),
    "circle": ("none", "multi_similarity"),
    "supcon": ("none", "multi_similarity"),
    "lifted": ("none", "multi_similarity"),
    "margin": ("distance_weighted", "none"),
}
MINER_METHODS = tuple(METHOD_MINERS)
# what the methods without a --margin fix instead (pytorch-metric-learning 2.9's defaults)
LOSS_PARAMETERS = {
    "multi_similarity": "it has alpha 2, beta 50, base 0.5 and its miner's epsilon 0.1, fixed",
    "supcon": "it has a temperature of 0.1, fixed",
    "npairs": "it has no parameter",
    "proxy_nca": "it has a softmax scale of 1, fixed",
    "normalized_softmax": "it has a temperature of 0.05, fixed",
}
# --memory-size: the pair losses a cross-batch memory can wrap (on similarities, and contrastive)
MEMORY_METHODS = ("online_contrastive", "multi_similarity", "circle", "supcon", "lifted")
# learnable proxies (shuffled batches; --loss-lr-mult scales the proxies' learning rate)
PROXY_METHODS = ("proxy_anchor", "proxy_nca", "normalized_softmax", "soft_triple")

# Defaults per method, then per dataset, then per (method, dataset); the command line overrides
# all three. P x K methods batch n_classes x n_samples images; the tuple methods and softmax batch
# batch_size tuples (pairs, triplets) or images and set n_classes = n_samples = 0.
_TUPLES = dict(n_classes=0, n_samples=0)
METHOD_DEFAULTS = {
    "siamese": dict(l2_normalize=True, margin=1.0, batch_size=64, **_TUPLES),
    "triplet": dict(l2_normalize=True, margin=0.5, batch_size=64, **_TUPLES),
    # FaceNet's setting: unit-length embeddings, margin 0.2 (on digits, margin 1.0 without the
    # normalization reaches a similar map_at_r but a less stable precision_at_1 across seeds)
    "triplet_semihard": dict(l2_normalize=True, margin=0.2, n_classes=10, n_samples=12),
    "triplet_batch_hard": dict(l2_normalize=True, margin=0.2, n_classes=10, n_samples=12),
    "triplet_batch_all": dict(l2_normalize=True, margin=0.2, n_classes=10, n_samples=12),
    "online_contrastive": dict(l2_normalize=True, margin=1.0, n_classes=10, n_samples=12,
                               selector="hard_negative"),
    # random_hard beat semihard on both digits seeds measured (map_at_r 0.92/0.95 vs 0.90/0.83)
    "online_triplet": dict(l2_normalize=True, margin=0.2, n_classes=10, n_samples=12,
                           selector="random_hard"),
    "softmax": dict(l2_normalize=False, distance="cosine", batch_size=120, **_TUPLES),
    # the heads normalize embeddings and class weights: the embedding is compared by angle
    "arcface": dict(l2_normalize=True, distance="cosine", margin=0.5, scale=64.0,
                    batch_size=120, **_TUPLES),
    "cosface": dict(l2_normalize=True, distance="cosine", margin=0.35, scale=64.0,
                    batch_size=120, **_TUPLES),
    "sphereface": dict(l2_normalize=True, distance="cosine", margin=4.0, scale=30.0,
                       batch_size=120, **_TUPLES),
    # pytorch-metric-learning 2.9's defaults; margin None: the loss has no margin to set
    # (multi-similarity: alpha 2, beta 50, base 0.5 and its miner's epsilon 0.1; SupCon:
    # temperature 0.1). Embeddings are unit length and compared by cosine, as the losses do.
    "multi_similarity": dict(l2_normalize=True, distance="cosine", margin=None, n_classes=10,
                             n_samples=12, miner="multi_similarity"),
    "circle": dict(l2_normalize=True, distance="cosine", margin=0.4, n_classes=10,
                   n_samples=12, miner="none"),  # margin: the relaxation m (gamma 80)
    "supcon": dict(l2_normalize=True, distance="cosine", margin=None, n_classes=10,
                   n_samples=12, miner="none"),
    "lifted": dict(l2_normalize=True, distance="euclidean", margin=1.0, n_classes=10,
                   n_samples=12, miner="none"),  # margin: neg_margin (pos_margin 0)
    # N pairs of N classes: two images per class (more would be unused: one pair per class)
    "npairs": dict(l2_normalize=True, distance="cosine", margin=None, n_classes=10,
                   n_samples=2),
    # margin 0.2, beta 1.2 (fixed), distance-weighted sampling: cutoff 0.5, nonzero cutoff 1.4
    "margin": dict(l2_normalize=True, distance="euclidean", margin=0.2, n_classes=10,
                   n_samples=12, miner="distance_weighted"),
    # proxies: margin 0.1 and alpha 32 (Proxy-Anchor), softmax_scale 1 (ProxyNCA), temperature
    # 0.05 (normalized softmax), K 10, la 20, gamma 0.1, margin 0.01 (SoftTriple). The papers
    # train Proxy-Anchor's proxies and SoftTriple's centres 100x faster than the network.
    "proxy_anchor": dict(l2_normalize=True, distance="cosine", margin=0.1, batch_size=120,
                         loss_lr_mult=100.0, **_TUPLES),
    "proxy_nca": dict(l2_normalize=True, distance="cosine", margin=None, batch_size=120,
                      loss_lr_mult=1.0, **_TUPLES),
    "normalized_softmax": dict(l2_normalize=True, distance="cosine", margin=None,
                               batch_size=120, loss_lr_mult=1.0, **_TUPLES),
    "soft_triple": dict(l2_normalize=True, distance="cosine", margin=0.01, batch_size=120,
                        loss_lr_mult=100.0, **_TUPLES),
    # ArcFace's m and s with 3 sub-centers per class (PML's SubCenterArcFaceLoss defaults)
    "subcenter_arcface": dict(l2_normalize=True, distance="cosine", margin=0.5, scale=64.0,
                              batch_size=120, **_TUPLES),
}
# The photo benchmarks train as their papers do: an ImageNet-pretrained ResNet-50 with frozen
# BatchNorm, 512-D embeddings, 224 x 224 random resized crops and flips, Adam at 1e-4.
_BENCHMARK = dict(epochs=40, n_classes=32, n_samples=4, image_size=224, augment="resized-crop-flip",
                  backbone="resnet50_v1", embedding_dim=512, pretrained=True, freeze_bn=True,
                  lr=1e-4)
# augment: digit-like images must not be mirrored (a flipped 2 is no digit); CIFAR, clothes and
# photos may be
_UNSEEN = dict(n_classes=32, n_samples=4, stem="auto", lr=3e-4, lr_schedule="cosine")
DATASET_DEFAULTS = {
    "digits": dict(epochs=10, augment="crop"),
    # class-disjoint sets of few images a class: the recipe of doc/unseen.md (32 x 4 batches, the
    # small stem at <= 64 px, Adam 3e-4 decayed to 0 by a cosine); characters: a mirrored glyph
    # may be another character (b and d), so no flip
    "glyphs": dict(epochs=10, augment="crop", **_UNSEEN),
    "cifar10": dict(epochs=60, n_classes=8, n_samples=16, lr_steps=[40, 50], augment="crop-flip"),
    "cifar100": dict(epochs=60, n_classes=16, n_samples=8, lr_steps=[40, 50], augment="crop-flip"),
    "mnist": dict(epochs=10, augment="crop"),
    "fashion-mnist": dict(epochs=20, augment="crop-flip"),
    "folder": dict(epochs=30, augment="crop-flip", **_UNSEEN),
    "cub200": dict(_BENCHMARK),
    "cars196": dict(_BENCHMARK),
    "sop": dict(_BENCHMARK, epochs=20),
    "inshop": dict(_BENCHMARK, epochs=20),
}
# method defaults that a dataset's batch shape does not override
METHOD_FIXED_DEFAULTS = {"npairs": dict(n_samples=2)}
METHOD_DATASET_DEFAULTS = {
    # three images a tuple: 10 epochs take ~160 s on 2 cores; 8 keep it well inside 3 minutes
    ("triplet", "digits"): dict(epochs=8),
}
