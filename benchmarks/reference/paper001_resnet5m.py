"""Paper 001 (Borkar et al., ResNet5M), the reference loops of its two scripted rows.

Row 6 (spec variant "row6"), models/ResNetTrain.py with TrainAndTest.py: BasicBlock
ResNet [2, 2, 2, 2] at 64/128/232/268, average pooling 4; RandomCrop(32, 4),
RandomHorizontalFlip, AutoAugment(CIFAR10), ToTensor, Normalize with its own
constants; SGD 0.01, momentum 0.9, weight decay 5e-4, CosineAnnealingLR stepped
per epoch; batch 128.

Row 1 ("row1"), ResnetQuickTrain.ipynb: BasicBlock ResNet [2, 3, 2, 2] at
64/128/192/256 with Dropout(0.2) after the stem and inside every block;
RandomCrop(32, 4), RandomHorizontalFlip, ToTensor, Normalize(0.5, 0.5); SGD 0.01,
momentum 0.9, no weight decay, OneCycleLR(max_lr 0.1) stepped per epoch; batch 32.
The notebook also augmented its test set; here the test set is not augmented, as
on the suite's side, so that both score the same images.
"""

import sys

from torch import nn, optim
from torch.nn import functional as F

from common import BasicBlock, Paper, main, stage

NORMALIZE = {"row6": ((0.4913996458, 0.4821584523, 0.4465309381),
                      (0.2470322549, 0.2434851378, 0.2615878880)),
             "row1": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}
SHAPES = {"row6": ([2, 2, 2, 2], [64, 128, 232, 268], 0.0),
          "row1": ([2, 3, 2, 2], [64, 128, 192, 256], 0.2)}


class ResNet(nn.Module):
    def __init__(self, blocks, widths, dropout, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(),
                                  nn.Dropout(dropout) if dropout else nn.Identity())
        stages, in_planes = [], widths[0]
        for index, (count, width) in enumerate(zip(blocks, widths)):
            stages.append(stage(BasicBlock, in_planes, width, count, 1 if index == 0 else 2,
                                dropout=dropout))
            in_planes = width
        self.stages = nn.Sequential(*stages)
        self.linear = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        return self.linear(F.avg_pool2d(self.stages(self.stem(x)), 4).flatten(1))


def train_transform(spec):
    from torchvision import transforms

    steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
    if spec["variant"] == "row6":
        steps.append(transforms.AutoAugment(transforms.AutoAugmentPolicy.CIFAR10))
    return transforms.Compose(steps + [transforms.ToTensor(),
                                       transforms.Normalize(*NORMALIZE[spec["variant"]])])


def optimizer(model, spec):
    decay = 5e-4 if spec["variant"] == "row6" else 0.0
    return optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=decay)


def scheduler(optimizer, spec):
    schedule = spec["schedule"]
    if spec["variant"] == "row6":
        return optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=schedule["t_max"])
    return optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=spec["epochs"])


def paper(variant):
    def test_transform():
        from torchvision import transforms

        return transforms.Compose([transforms.ToTensor(),
                                   transforms.Normalize(*NORMALIZE[variant])])

    return Paper(name=f"paper001_resnet5m_{variant}",
                 network=lambda spec: ResNet(*SHAPES[variant]),
                 train_transform=train_transform, test_transform=test_transform,
                 optimizer=optimizer, scheduler=scheduler,
                 batch_size=128 if variant == "row6" else 32)


if __name__ == "__main__":
    import json

    variant = json.loads(sys.argv[sys.argv.index("--spec") + 1])["variant"]
    sys.exit(main(paper(variant)))
