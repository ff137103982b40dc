#!/usr/bin/env bash
# CIFAR-10, ResNet-18 triplet network: triplet loss (margin 0.5, unit-length embeddings) on 64
# random (anchor, positive, negative) triplets per batch, drawn afresh each epoch; Adam 1e-3
# decayed x0.1 after epochs 40 and 50. Uses every GPU mxnet sees, else the CPU.
# Extra arguments pass through: bash train_cifar_triplet.sh --epochs 3 --gpus 0,1
source "$(dirname "${BASH_SOURCE[0]}")/scripts/train_common.sh"
dml_train --method triplet --dataset cifar10 --backbone resnet18_v1 \
  --batch-size 64 --margin 0.5 --epochs 60 --optimizer adam --lr 1e-3 --lr-steps 40,50 "$@"
