"""One :class:`RunConfig` per run, saved as ``config.json``, and the defaults of each method."""
import dataclasses
from dataclasses import dataclass, field
from typing import List, Optional


@dataclass
class RunConfig:
    method: str = "triplet_semihard"
    dataset: str = "digits"
    data_root: Optional[str] = None
    split: str = "test"
    output_root: str = "."
    epochs: int = 10
    n_classes: int = 10
    n_samples: int = 12
    batch_size: int = 0
    selector: Optional[str] = None
    embedding_dim: int = 128
    l2_normalize: bool = False
    margin: float = 1.0
    scale: float = 0.0  # s of the margin-softmax heads (arcface, cosface, sphereface)
    distance: str = "euclidean"
    optimizer: str = "adam"
    lr: float = 1e-3
    wd: float = 0.0
    momentum: float = 0.9
    lr_steps: List[int] = field(default_factory=list)
    lr_factor: float = 0.1
    backbone: str = "resnet18_v1"
    pretrained: bool = False
    image_size: int = 32
    augment: bool = True
    gpus: List[int] = field(default_factory=list)
    cpus: int = 0
    kvstore: str = "device"
    num_workers: int = 2
    seed: int = 0
    save_period: int = 1
    keep_checkpoints: int = 1
    eval_period: int = 0
    log_interval: int = 10
    projector_points: int = 2000
    eval_batch_size: int = 256

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


from .registry import DATASET_DEFAULTS, METHOD_DATASET_DEFAULTS, METHOD_DEFAULTS  # noqa: E402


def defaults_for(method, dataset):
    values = RunConfig().to_dict()
    values.update(METHOD_DEFAULTS.get(method, {}))
    dataset_values = dict(DATASET_DEFAULTS.get(dataset, {}))
    if values["batch_size"]:  # not a P x K method: the dataset's batch shape does not apply
        dataset_values.pop("n_classes", None)
        dataset_values.pop("n_samples", None)
    values.update(dataset_values)
    values.update(METHOD_DATASET_DEFAULTS.get((method, dataset), {}))
    return values
