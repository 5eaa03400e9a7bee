"""Paper 003 (Rayyan et al.): ResNet + SE + mixup, the reference loop of Main.ipynb,
trainer.py and utils.py.

ResNet [4, 3, 2, 3] at 64/128/128/256 with one squeeze-and-excitation block after
the stem, average pooling 8. The images are the /255 float arrays, so ToTensor
keeps their scale and the augmentation runs on tensors: RandomCrop(32, 4),
RandomHorizontalFlip(0.2), RandomGrayscale(0.2), RandomAutocontrast(0.2),
Normalize with kuangliu's constants. SGD 0.1, momentum 0.9, weight decay 5e-4,
gradients clipped by value at 0.1 before the step; CosineAnnealingLR stepped per
epoch. An epoch is a mixup epoch with probability 0.9 (np.random.rand() < 0.9)
until the spec's stop_epoch: each batch mixed with a permutation of itself at one
lambda ~ Beta(1, 1), loss lam * CE(y_a) + (1 - lam) * CE(y_b); batch 128.
"""

import sys

import numpy as np
import torch
from torch import nn, optim
from torch.nn import functional as F

from common import KUANGLIU, BasicBlock, Paper, main, stage


class SqueezeExcite(nn.Module):
    def __init__(self, channels, reduction=16):
        super().__init__()
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1),
                                  nn.Conv2d(channels, channels // reduction, 1), nn.ReLU(),
                                  nn.Conv2d(channels // reduction, channels, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.gate(x)


class SEResNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(), SqueezeExcite(64))
        # The code's block is the post-activation one (its optional dropout is off in
        # the final model).
        self.stages = nn.Sequential(
            stage(BasicBlock, 64, 64, 4, 1), stage(BasicBlock, 64, 128, 3, 2),
            stage(BasicBlock, 128, 128, 2, 1), stage(BasicBlock, 128, 256, 3, 2))
        self.linear = nn.Linear(256, num_classes)

    def forward(self, x):
        return self.linear(F.avg_pool2d(self.stages(self.stem(x)), 8).flatten(1))


def train_transform(spec):
    from torchvision import transforms

    return transforms.Compose([
        transforms.ToTensor(), transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(0.2), transforms.RandomGrayscale(p=0.2),
        transforms.RandomAutocontrast(0.2), transforms.Normalize(*KUANGLIU)])


def test_transform():
    from torchvision import transforms

    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(*KUANGLIU)])


def train_epoch(model, loader, optimizer, scheduler, spec, epoch):
    """trainer.py's mixup_train in a mixup epoch, its train otherwise."""
    mixed = epoch < spec["schedule"]["stop_epoch"] and np.random.rand() < 0.9
    model.train()
    total, batches = 0.0, 0
    for images, labels in loader:
        optimizer.zero_grad()
        if mixed:
            partner = torch.randperm(images.shape[0])
            lam = np.random.beta(1, 1)
            logits = model(lam * images + (1 - lam) * images[partner])
            loss = lam * F.cross_entropy(logits, labels) + (1 - lam) * F.cross_entropy(
                logits, labels[partner])
        else:
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        nn.utils.clip_grad_value_(model.parameters(), clip_value=0.1)
        optimizer.step()
        total += loss.item()
        batches += 1
    return total / max(batches, 1)


PAPER = Paper(
    name="paper003_se_resnet", network=lambda spec: SEResNet(),
    train_transform=train_transform, test_transform=test_transform,
    optimizer=lambda model, spec: optim.SGD(model.parameters(), lr=0.1, momentum=0.9,
                                            weight_decay=5e-4),
    scheduler=lambda optimizer, spec: optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=spec["schedule"]["t_max"]),
    as_image="float", train_epoch=train_epoch)

if __name__ == "__main__":
    sys.exit(main(PAPER))
