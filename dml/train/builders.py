"""What a run of a configuration is built from: the network, the loss, the loaders, the
trainer.
"""
import logging

import mxnet as mx
from mxnet import gluon

from ..data import BatchLoader, SequentialBatches
from ..methods import get_method
from ..nets import EmbeddingNet
from .devices import CPU_SYNC_NOTE, cpu_engine_threads

log = logging.getLogger("dml")


def net_options(cfg):
    """The :func:`build_net` arguments of a run's config (``stem="auto"`` resolved)."""
    from ..config import resolve_stem

    return dict(embedding_dim=cfg.embedding_dim, backbone=cfg.backbone,
                l2_normalize=cfg.l2_normalize, pretrained=cfg.pretrained,
                freeze_bn=cfg.freeze_bn,
                stem=resolve_stem(cfg.stem, cfg.image_size, cfg.pretrained, cfg.backbone))


def build_net(ctx, embedding_dim=128, backbone="resnet18_v1", l2_normalize=False,
              pretrained=False, freeze_bn=False, train=False, stem="imagenet"):
    """An initialized :class:`EmbeddingNet` on ``ctx`` (GluonCV's ImageNet weights for the
    backbone with ``pretrained``; BatchNorm frozen with ``freeze_bn``). ``train`` on several
    devices: BatchNorm statistics over the whole batch (SyncBatchNorm), so that the devices train
    the network one device would (:func:`train_step` then runs each device in a thread). On CPU
    contexts that needs MXNet's engine to run two or more threads per device (with one, two
    BatchNorm layers of parallel branches can wait on each other: :data:`CPU_SYNC_NOTE`)."""
    synced = train and len(ctx) > 1 and not freeze_bn
    if synced and not all(c.device_type == "gpu" for c in ctx) and cpu_engine_threads() < 2:
        log.warning(CPU_SYNC_NOTE, len(ctx))
        synced = False
    net = EmbeddingNet(embedding_dim=embedding_dim, backbone=backbone, l2_normalize=l2_normalize,
                       pretrained=pretrained, freeze_bn=freeze_bn,
                       sync_devices=len(ctx) if synced else 0, stem=stem)
    if pretrained:
        net.embedding.initialize(mx.init.Xavier(), ctx=ctx)
        net.features.collect_params().reset_ctx(ctx)
    else:
        net.initialize(mx.init.Xavier(magnitude=2), ctx=ctx)
    return net


def build_loss(cfg):
    """The loss of a run's config (its method's, with its margin, distance and selector)."""
    return get_method(cfg.method).build_loss(cfg.margin, cfg.distance, cfg.selector,
                                             miner=cfg.miner, memory_size=cfg.memory_size)


def build_train_loader(cfg, splits, num_parts=1, part_index=0):
    """The training batches; of a distributed job, worker ``part_index``'s shard."""
    method = get_method(cfg.method)
    dataset = method.train_dataset(splits.train, cfg.seed)
    sampler = method.batch_sampler(dataset, cfg.n_classes, cfg.n_samples, cfg.batch_size,
                                   cfg.seed, num_parts, part_index)
    return BatchLoader(dataset, sampler, splits.mean, splits.std,
                       augment=splits.augmentation(cfg.augment), seed=cfg.seed,
                       num_workers=cfg.num_workers)


def build_trainer(cfg, model, workers=None):
    """``gluon.Trainer`` over ``cfg.kvstore``. In a synchronous distributed job the servers only
    sum gradients and every worker applies the same update (``update_on_kvstore=False``), so the
    optimizer states are local and can be checkpointed; dist_async updates on the servers."""
    opt_params = {"learning_rate": cfg.lr, "wd": cfg.wd}
    if cfg.optimizer == "sgd":
        opt_params["momentum"] = cfg.momentum
    if workers is None or workers.kv is None:
        return gluon.Trainer(model.collect_params(), cfg.optimizer, opt_params,
                             kvstore=cfg.kvstore)
    return gluon.Trainer(model.collect_params(), cfg.optimizer, opt_params, kvstore=workers.kv,
                         update_on_kvstore=workers.asynchronous)


def eval_loader(cfg, splits, dataset):
    return BatchLoader(dataset, SequentialBatches(len(dataset), cfg.eval_batch_size), splits.mean,
                       splits.std, augment=None, num_workers=cfg.num_workers)
