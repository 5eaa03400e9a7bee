"""He et al. (2015), CIFAR ResNet-20, a reference loop from the paper's text.

The authors released no PyTorch code for their CIFAR runs, so this follows the
paper: three stages of 3 BasicBlocks at 16/32/64 filters, option-A shortcuts
(every second pixel, channels zero-padded), global average pooling, a 10-way
fully connected layer; weights initialised as in He et al. (Kaiming normal, fan
in). Per-pixel mean subtraction (the training set's mean image, on the [0, 1]
scale) before the 4-pixel pad-and-crop and the flip, so the padding is the mean
image. SGD 0.1, momentum 0.9, weight decay 1e-4, the rate divided by 10 at the
spec's iteration boundaries (MultiStepLR stepped after every update); batch 128.
"""

import sys

import numpy as np
import torch
from torch import nn, optim
from torch.nn import functional as F

from common import BasicBlock, Paper, main


class OptionA(nn.Module):
    def __init__(self, pad):
        super().__init__()
        self.pad = pad

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class Block(BasicBlock):
    """The post-activation block with an option-A shortcut where the shape changes."""

    def __init__(self, in_planes, planes, stride=1):
        super().__init__(in_planes, planes, stride)
        if stride != 1 or in_planes != planes:
            self.shortcut = OptionA(planes // 4)


class ResNet20(nn.Module):
    def __init__(self, num_classes=10, blocks=3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU())
        layers, in_planes = [], 16
        for index, planes in enumerate((16, 32, 64)):
            for block in range(blocks):
                layers.append(Block(in_planes, planes, 2 if index > 0 and block == 0 else 1))
                in_planes = planes
        self.stages = nn.Sequential(*layers)
        self.linear = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x):
        out = self.stages(self.stem(x))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


class MeanImage:
    """x / 255 minus the training set's per-pixel mean, as a float HWC tensor; the
    spec's mean image comes from the training subset."""

    def __init__(self, mean):
        self.mean = torch.tensor(mean, dtype=torch.float32).permute(2, 0, 1)

    def __call__(self, image):
        return torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1) - self.mean


def _mean_image(spec):
    from data.cifar import load_cifar

    data = load_cifar("cifar10", spec.get("data_dir"))
    count = spec["train_images"] or len(data.x_train)
    return (data.x_train[:count].astype(np.float64) / 255).mean(axis=0)


def train_transform(spec):
    from torchvision import transforms

    return transforms.Compose([MeanImage(_mean_image(spec)), transforms.RandomCrop(32, padding=4),
                               transforms.RandomHorizontalFlip()])


def paper():
    state = {}

    def train(spec):
        transform = train_transform(spec)
        state["mean"] = transform.transforms[0]
        return transform

    return Paper(
        name="he2015_resnet20", network=lambda spec: ResNet20(), train_transform=train,
        test_transform=lambda: state["mean"],
        optimizer=lambda model, spec: optim.SGD(model.parameters(), lr=0.1, momentum=0.9,
                                                weight_decay=1e-4),
        scheduler=lambda optimizer, spec: optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=spec["schedule"]["milestones"], gamma=0.1),
        step="iteration")


if __name__ == "__main__":
    sys.exit(main(paper()))
