"""Paper 002 (Reddy, Sehati): ModifiedResNet, the reference loop of
"model training code.ipynb".

kuangliu's ResNet without its last stage: BasicBlocks [2, 2, 2] at 64/128/256,
average pooling 8. RandomCrop(32, 4), RandomHorizontalFlip, ColorJitter(0.3, 0.3,
0.3, 0.1), RandomRotation(20), RandomAffine(0, translate=(0.1, 0.1)), ToTensor,
Normalize(0.5, 0.5) on PIL images; Adam 1e-3 with coupled weight decay 1e-4;
ReduceLROnPlateau(factor 0.1, patience from the spec) stepped each epoch on the
test loss, as the notebook did; batch 128.
"""

import sys

from torch import nn, optim
from torch.nn import functional as F

from common import BasicBlock, Paper, main, stage

HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


class ModifiedResNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU())
        self.stages = nn.Sequential(stage(BasicBlock, 64, 64, 2, 1),
                                    stage(BasicBlock, 64, 128, 2, 2),
                                    stage(BasicBlock, 128, 256, 2, 2))
        self.linear = nn.Linear(256, num_classes)

    def forward(self, x):
        return self.linear(F.avg_pool2d(self.stages(self.stem(x)), 8).flatten(1))


def train_transform(spec):
    from torchvision import transforms

    return transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
        transforms.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1),
        transforms.RandomRotation(20), transforms.RandomAffine(0, translate=(0.1, 0.1)),
        transforms.ToTensor(), transforms.Normalize(*HALF)])


def test_transform():
    from torchvision import transforms

    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(*HALF)])


PAPER = Paper(
    name="paper002_modified_resnet", network=lambda spec: ModifiedResNet(),
    train_transform=train_transform, test_transform=test_transform,
    optimizer=lambda model, spec: optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4),
    scheduler=lambda optimizer, spec: optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=0.1, patience=spec["schedule"]["patience"]),
    step="plateau")

if __name__ == "__main__":
    sys.exit(main(PAPER))
