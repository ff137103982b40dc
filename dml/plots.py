"""Figures of a run and of a comparison, drawn with matplotlib (Agg, no screen needed) and written
as PNG files; :func:`png_to_chw` reads one back for TensorBoard's image tab."""
import os

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    """Write through a temporary file and a rename, so a reader never sees half a PNG."""
    from .runs import write_atomic

    plt = _pyplot()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        write_atomic(lambda tmp: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"),
                     path)
    finally:
        plt.close(fig)
    return path


def loss_curve(history, path, title=""):
    """Training loss per epoch (and the validation loss, the validation classes' map_at_r and
    the evaluated map_at_r when logged)."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train loss")
    if any("val_loss" in h for h in history):
        ax.plot([h["epoch"] for h in history if "val_loss" in h],
                [h["val_loss"] for h in history if "val_loss" in h], marker="s", label="val loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = ax.get_legend_handles_labels()
    ax2 = None
    for key, colour, name in (("map_at_r", "tab:green", "map_at_r"),
                              ("val_map_at_r", "tab:purple", "validation map_at_r")):
        evaluated = [h for h in history if key in h]
        if not evaluated:
            continue
        if ax2 is None:
            ax2 = ax.twinx()
            ax2.set_ylabel("map_at_r")
            ax2.set_ylim(0, 1)
        line, = ax2.plot([h["epoch"] for h in evaluated], [h[key] for h in evaluated],
                         color=colour, marker="^", linestyle="--")
        handles.append(line)
        labels.append(name)
    ax.legend(handles, labels, loc="center right")
    ax.set_title(title or "training loss")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def embedding_2d(embeddings, seed=0):
    """The embedding's 2-D picture: the raw plane when it is 2-D, else scikit-learn's t-SNE.
    A collapsed embedding (every point the same, :func:`dml.evaluation.is_collapsed`) is drawn
    as it is, one point (t-SNE crashes on it), and so are fewer than 5 points (too few for it)."""
    from .evaluation import is_collapsed

    x = np.asarray(embeddings, dtype=np.float64)
    if x.shape[1] == 2:
        return x
    if x.shape[1] == 1 or is_collapsed(x) or len(x) < 5:
        return np.concatenate([x[:, :1], np.zeros((len(x), 1))], axis=1)
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3.0)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def embedding_scatter(points, labels, class_names, path, title=""):
    """A scatter of 2-D ``points`` coloured by class, with a legend of class names."""
    plt = _pyplot()
    labels = np.asarray(labels).reshape(-1)
    classes = np.unique(labels)
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(7, 6))
    for i, c in enumerate(classes):
        mask = labels == c
        ax.scatter(points[mask, 0], points[mask, 1], s=8, alpha=0.8, color=cmap(i % cmap.N),
                   label=class_names[int(c)] if int(c) < len(class_names) else str(c))
    if len(classes) <= 20:
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=2, fontsize=8)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    return _save(fig, path)


def metrics_bars(rows, keys, path, label_key="run", title=""):
    """Grouped bar chart: one group per metric, one bar per row (a run, or an experiment whose
    ``<metric>_ci95`` half widths are drawn as error bars)."""
    plt = _pyplot()
    n = len(rows)
    width = 0.8 / max(n, 1)
    fig, ax = plt.subplots(figsize=(min(16.0, max(6.0, 0.9 * len(keys) + 0.06 * n * len(keys))),
                                    4.5))
    x = np.arange(len(keys))
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    for i, row in enumerate(rows):
        values = [row.get(k) if isinstance(row.get(k), (int, float)) else np.nan for k in keys]
        errors = [row.get(k + "_ci95") or 0.0 for k in keys]
        ax.bar(x + (i - (n - 1) / 2) * width, values, width, label=str(row[label_key]),
               color=cmap(i % cmap.N), yerr=errors if any(errors) else None, capsize=1,
               error_kw=dict(elinewidth=0.6, ecolor="dimgrey", alpha=0.7))
    ax.set_xticks(x)
    ax.set_xticklabels(keys, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("value")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=min(n, 3), fontsize=8)
    ax.set_title(title)
    return _save(fig, path)


GREEN, RED, GREY = (46, 160, 67), (207, 34, 46), (140, 140, 140)


def neighbour_grid(rows, path, thumb=96, title=""):
    """A PNG of retrieval results: one row per query, the query image then its neighbours, each
    captioned (label, and the distance for neighbours) and framed green when its label is the
    query's, red when it differs, grey when either label is unknown. ``rows``: dicts with
    ``query`` (uint8 H x W x 3), ``query_label`` (str, "" unknown) and ``neighbours`` (a list of
    ``(image, label, distance)``)."""
    from PIL import Image, ImageDraw, ImageFont

    from .runs import write_atomic

    font = ImageFont.load_default()
    pad, caption, border = 6, 14, 3
    cols = 1 + max(len(r["neighbours"]) for r in rows)
    cell_w, cell_h = thumb + 2 * border + pad, thumb + 2 * border + 2 * caption + pad
    top = 2 * caption if title else pad
    sheet = Image.new("RGB", (pad + cols * cell_w + pad, top + len(rows) * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, pad // 2), title, fill=(0, 0, 0), font=font)

    def cell(col, row, image, colour, lines):
        x = pad + col * cell_w + (pad if col else 0) // 2
        y = top + row * cell_h
        draw.rectangle([x, y, x + thumb + 2 * border - 1, y + thumb + 2 * border - 1], fill=colour)
        img = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
        img = img.resize((thumb, thumb), Image.NEAREST if min(img.size) < thumb // 2
                         else Image.BILINEAR)
        sheet.paste(img, (x + border, y + border))
        for i, line in enumerate(lines):
            draw.text((x, y + thumb + 2 * border + i * caption), line[:18], fill=(0, 0, 0),
                      font=font)

    for r, row in enumerate(rows):
        cell(0, r, row["query"], (0, 0, 0), ["query", row["query_label"] or "?"])
        for c, (image, label, dist) in enumerate(row["neighbours"], 1):
            colour = GREY if not (label and row["query_label"]) else (
                GREEN if label == row["query_label"] else RED)
            cell(c, r, image, colour, ["%s" % (label or "?"), "d=%.4g" % dist])

    def save(tmp):
        sheet.save(tmp, format="PNG")

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomic(save, path)
    return path


def retrieval_queries(labels, per_class=1, max_classes=8, seed=0):
    """Fixed query indices for the retrieval picture: ``per_class`` images of each of at most
    ``max_classes`` classes (the same ones every epoch and in ``dml evaluate``)."""
    labels = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    if len(classes) > max_classes:
        classes = np.sort(rng.choice(classes, max_classes, replace=False))
    chosen = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        chosen.extend(np.sort(rng.choice(members, min(per_class, len(members)), replace=False)))
    return np.asarray(chosen, dtype=np.int64)


def png_to_chw(path):
    """A PNG as a uint8 3 x H x W array (what ``SummaryWriter.add_image`` takes)."""
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)
