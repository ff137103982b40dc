import sys

from setuptools import find_packages, setup

if not ((3, 8) <= sys.version_info[:2] < (3, 12)):
    sys.exit(
        "dml needs Python 3.8-3.11: mxnet 1.9.1 needs numpy 1.23.5, which has no wheel for "
        "Python %d.%d. Use e.g. `make PYTHON=python3.11 install`." % sys.version_info[:2]
    )

setup(
    name="dml",
    version="0.1.0",
    description="Deep metric learning on MXNet Gluon: siamese, triplet and margin-softmax embeddings",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["dml", "dml.*"]),
    python_requires=">=3.8,<3.12",
    install_requires=[
        "numpy==1.23.5",
        "gluoncv==0.10.5.post0",
        "mxboard==0.1.0",
        "protobuf==3.20.3",
        "scikit-learn",
        "numba>=0.57",
        "tqdm",
        "Pillow",
        "matplotlib",
    ],
    # mxnet is an extra so that the CPU and the CUDA wheel are never both installed.
    extras_require={
        "cpu": ["mxnet==1.9.1"],
        "gpu": ["mxnet-cu112==1.9.1"],
        "tensorboard": ["tensorboard==2.20.0"],
        "test": ["pytest"],
    },
    entry_points={"console_scripts": ["dml=dml.cli:main"]},
)
