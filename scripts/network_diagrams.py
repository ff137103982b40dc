#!/usr/bin/env python
"""Draw the siamese and triplet setups as dml builds them: doc/siamese_net.png, doc/triplet_net.png.

The boxes are not typed in by hand: the script builds the real ``SiameseNet`` / ``TripletNet``
around an ``EmbeddingNet`` with the method's defaults, runs one forward pass, and reads each
stage's name and output shape, the number of parameters and the loss's class and margin from the
objects themselves.

    python scripts/network_diagrams.py [--out-dir doc] [--image-size 32] [--backbone resnet18_v1]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def describe(method_name, backbone, image_size):
    """What the picture shows, read off the built network."""
    import mxnet as mx

    from dml.config import RunConfig, defaults_for
    from dml.methods import get_method
    from dml.nets import EmbeddingNet

    cfg = RunConfig.from_dict(defaults_for(method_name, "cifar10"))
    method = get_method(method_name)
    net = EmbeddingNet(embedding_dim=cfg.embedding_dim, backbone=backbone,
                       l2_normalize=cfg.l2_normalize)
    net.initialize(mx.init.Xavier())
    model = method.build_model(net, 10, mx.cpu())
    x = mx.nd.zeros((2, 3, image_size, image_size))
    inputs = [x] * model.num_inputs
    outputs = model(*inputs)
    features = net.features(x)
    stages = [type(block).__name__ for block in net.features._children.values()]
    loss = method.build_loss(cfg.margin, cfg.distance, cfg.selector)
    n_params = sum(int(p.data().size) for p in net.collect_params().values())
    return dict(
        wrapper=type(model).__name__, inputs=model.num_inputs, image=tuple(x.shape[1:]),
        backbone=backbone, stages=stages, feature_dim=int(features.shape[1]),
        embedding_dim=int(outputs[0].shape[1]), l2=cfg.l2_normalize, n_params=n_params,
        loss=type(loss).__name__, margin=cfg.margin, distance=cfg.distance,
        batch_unit=method.batch_unit)


def draw(info, path, input_names, output_names, loss_formula):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    n = info["inputs"]
    fig, ax = plt.subplots(figsize=(11, 1.9 + 1.5 * n))
    ax.set_xlim(0, 11)
    height = 1.4 * n + 1.0
    ax.set_ylim(0, height)
    ax.axis("off")
    ys = [height - 1.0 - 1.4 * i for i in range(n)]

    def box(x, y, w, h, text, color, size=9, style="round,pad=0.05"):
        ax.add_patch(FancyBboxPatch((x, y - h / 2), w, h, boxstyle=style, fc=color, ec="#333333",
                                    lw=1.2))
        ax.text(x + w / 2, y, text, ha="center", va="center", fontsize=size)

    def arrow(x0, y0, x1, y1):
        ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=12,
                                     lw=1.2, color="#333333"))

    c, h, w = info["image"]
    for y, name in zip(ys, input_names):
        box(0.1, y, 1.5, 0.8, "%s\n%d x %d x %d" % (name, c, h, w), "#dbe9f6")
    # one shared embedding net: drawn once per input, inside one dashed "shared weights" frame
    top, bottom = ys[0] + 0.55, ys[-1] - 0.55
    ax.add_patch(FancyBboxPatch((2.0, bottom), 4.6, top - bottom, boxstyle="round,pad=0.1",
                                fc="none", ec="#888888", ls="--", lw=1.2))
    ax.text(4.3, top + 0.2, "one EmbeddingNet, shared weights (%s params): the inputs are "
            "concatenated and embedded in one pass" % format(info["n_params"], ","),
            ha="center", va="bottom", fontsize=8, color="#555555")
    for y in ys:
        arrow(1.6, y, 2.1, y)
        box(2.1, y, 2.2, 0.8, "%s features\n(%d blocks) -> %d" % (
            info["backbone"], len(info["stages"]), info["feature_dim"]), "#fde8c8", size=8)
        arrow(4.3, y, 4.55, y)
        box(4.55, y, 1.95, 0.8, "Dense(%d)%s" % (info["embedding_dim"],
                                                 "\n+ L2 normalize" if info["l2"] else ""),
            "#fde8c8", size=8)
    for y, name in zip(ys, output_names):
        arrow(6.5, y, 7.0, y)
        box(7.0, y, 1.1, 0.7, "%s\n%d-D" % (name, info["embedding_dim"]), "#e3f4dd", size=8)
    mid = (ys[0] + ys[-1]) / 2
    for y in ys:
        arrow(8.1, y, 8.55, mid)
    box(8.55, mid, 2.35, 1.2, "%s\nmargin %g, %s\n%s" % (info["loss"], info["margin"],
                                                         info["distance"], loss_formula),
        "#f6d5d5", size=8)
    ax.set_title("%s: %d inputs per %s, one shared embedding network" % (
        info["wrapper"], n, info["batch_unit"][:-1]), fontsize=11)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default="doc")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--backbone", default="resnet18_v1")
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    siamese = describe("siamese", args.backbone, args.image_size)
    print(draw(siamese, os.path.join(args.out_dir, "siamese_net.png"), ["x1", "x2"], ["e1", "e2"],
               "y d^2 / 2 +\n(1 - y) relu(m - d)^2 / 2"))
    triplet = describe("triplet", args.backbone, args.image_size)
    print(draw(triplet, os.path.join(args.out_dir, "triplet_net.png"),
               ["anchor", "positive", "negative"], ["e_a", "e_p", "e_n"],
               "relu(d(a,p) - d(a,n) + m)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
