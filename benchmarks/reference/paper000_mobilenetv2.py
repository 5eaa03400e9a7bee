"""Paper 000 (Roychoudhury): MobileNetV2 with expansion 7, the reference loop.

No script of the author exists; the paper builds on kuangliu/pytorch-cifar, so
this follows kuangliu's MobileNetV2 (stride 1 in the second row, global average
pooling of the 4x4 map) with expansion 7, and kuangliu's main.py: RandomCrop(32,
padding=4), RandomHorizontalFlip, ToTensor, Normalize with kuangliu's constants;
SGD momentum 0.9, weight decay 5e-4 (coupled), at the paper's lr 0.045, decayed
per epoch by ExponentialLR (gamma from the spec: the paper gives none).
"""

import sys

from torch import nn, optim
from torch.nn import functional as F

from common import KUANGLIU, Paper, main

ROWS = [(1, 16, 1, 1), (7, 24, 2, 1), (7, 32, 3, 2), (7, 64, 4, 2), (7, 96, 3, 1),
        (7, 160, 3, 2), (7, 320, 1, 1)]  # expansion, output channels, blocks, first stride


class Bottleneck(nn.Module):
    """1x1 expansion of the input channels (also at t = 1) - depthwise 3x3 - linear 1x1;
    a shortcut only at stride 1 (a 1x1 projection where the channels change)."""

    def __init__(self, in_planes, out_planes, expansion, stride):
        super().__init__()
        hidden = expansion * in_planes
        self.stride = stride
        self.expand = nn.Sequential(nn.Conv2d(in_planes, hidden, 1, bias=False),
                                    nn.BatchNorm2d(hidden), nn.ReLU())
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU())
        self.project = nn.Sequential(nn.Conv2d(hidden, out_planes, 1, bias=False),
                                     nn.BatchNorm2d(out_planes))
        self.shortcut = nn.Sequential()
        if stride == 1 and in_planes != out_planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, bias=False),
                                          nn.BatchNorm2d(out_planes))

    def forward(self, x):
        out = self.project(self.depthwise(self.expand(x)))
        return out + self.shortcut(x) if self.stride == 1 else out


class MobileNetV2(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32),
                                  nn.ReLU())
        blocks, in_planes = [], 32
        for expansion, out_planes, count, stride in ROWS:
            for index in range(count):
                blocks.append(Bottleneck(in_planes, out_planes, expansion,
                                         stride if index == 0 else 1))
                in_planes = out_planes
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Conv2d(320, 1280, 1, bias=False), nn.BatchNorm2d(1280),
                                  nn.ReLU())
        self.linear = nn.Linear(1280, num_classes)

    def forward(self, x):
        out = self.head(self.blocks(self.stem(x)))
        return self.linear(F.avg_pool2d(out, 4).flatten(1))


def train_transform(spec):
    from torchvision import transforms

    return transforms.Compose([transforms.RandomCrop(32, padding=4),
                               transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                               transforms.Normalize(*KUANGLIU)])


def test_transform():
    from torchvision import transforms

    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(*KUANGLIU)])


PAPER = Paper(
    name="paper000_mobilenetv2", network=lambda spec: MobileNetV2(),
    train_transform=train_transform, test_transform=test_transform,
    optimizer=lambda model, spec: optim.SGD(model.parameters(), lr=0.045, momentum=0.9,
                                            weight_decay=5e-4),
    scheduler=lambda optimizer, spec: optim.lr_scheduler.ExponentialLR(
        optimizer, gamma=spec["schedule"]["gamma"]))

if __name__ == "__main__":
    sys.exit(main(PAPER))
