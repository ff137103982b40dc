#!/usr/bin/env bash
# CIFAR-10, ResNet-18, triplet loss with online semi-hard mining (FaceNet), 8 classes x 16 images
# per batch, Adam 1e-3 decayed x0.1 after epochs 40 and 50. Uses every GPU mxnet sees, else the CPU.
# Extra arguments pass through: bash train_cifar_triplet_semihard.sh --epochs 3 --gpus 0,1
source "$(dirname "${BASH_SOURCE[0]}")/scripts/train_common.sh"
dml_train --method triplet_semihard --dataset cifar10 --backbone resnet18_v1 \
  --n-classes 8 --n-samples 16 --epochs 60 --optimizer adam --lr 1e-3 --lr-steps 40,50 "$@"
