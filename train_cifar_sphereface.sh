#!/usr/bin/env bash
# CIFAR-10, ResNet-18 embedding (128-d, unit length) trained by softmax cross-entropy over a
# SphereFace head (multiplicative angular margin m = 4, annealed; scale s = 30) on 120 shuffled
# images per batch; Adam 1e-3 decayed x0.1 after epochs 40 and 50.
# Uses every GPU mxnet sees, else the CPU. The embedding before the head is evaluated and exported.
# Extra arguments pass through: bash train_cifar_sphereface.sh --epochs 3 --gpus 0,1
source "$(dirname "${BASH_SOURCE[0]}")/scripts/train_common.sh"
dml_train --method sphereface --dataset cifar10 --backbone resnet18_v1 \
  --batch-size 120 --margin 4 --scale 30 --epochs 60 --optimizer adam --lr 1e-3 --lr-steps 40,50 "$@"
