"""The reference side of benchmarks/parity.py: one paper's own PyTorch training
loop, as its authors wrote it, on the suite's CIFAR arrays.

Each paper's script (paper000_mobilenetv2.py, ...) defines a `Paper`: its network
(PyTorch modules with PyTorch's default initialisation unless the paper says
otherwise), its torchvision transforms in their order, its optimizer, scheduler
and the cadence its code stepped them at, and, where the code had one, its own
training step (mixup, clipping). `main()` below is the driver they share:

    python benchmarks/reference/<paper>.py --spec '{"epochs": 4, ...}' --json OUT

spec: experiment, epochs, train_images, seed, data_dir, eval_images (scored
every epoch, the first of the test set), schedule (the compressed numbers
parity.py chose, the same for both sides). The JSON written holds every
epoch's training loss and test accuracy, and the final model's accuracy on the
whole test set.
"""

import argparse
import dataclasses
import json
import os
import random
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

KUANGLIU = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))  # kuangliu/pytorch-cifar


@dataclasses.dataclass
class Paper:
    """What one paper's code fixed. `step` is "epoch" (scheduler.step() after each
    epoch), "iteration" (after each update) or "plateau" (step(test loss) per epoch)."""
    name: str
    network: object  # spec -> nn.Module
    train_transform: object  # spec -> a callable on one image (see `as_image`)
    test_transform: object  # () -> the same
    optimizer: object  # (model, spec) -> torch.optim.Optimizer
    scheduler: object  # (optimizer, spec) -> an LR scheduler
    step: str = "epoch"
    batch_size: int = 128
    as_image: str = "pil"  # "pil": a PIL image; "float": the /255 float HWC array (paper 003)
    train_epoch: object = None  # (model, loader, optimizer, scheduler, spec, epoch) -> mean loss
    notes: str = ""


class Images(Dataset):
    """uint8 HWC images as the paper's code fed its transforms."""

    def __init__(self, images, labels, transform, as_image):
        self.images, self.labels = images, labels
        self.transform, self.as_image = transform, as_image

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        from PIL import Image

        image = self.images[index]
        if self.as_image == "pil":
            image = Image.fromarray(image)
        else:  # paper 003 divided the whole array by 255 before ToTensor
            image = image.astype(np.float64) / 255
        return self.transform(image).float(), int(self.labels[index])


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def plain_train_epoch(model, loader, optimizer, scheduler, spec, epoch, clip_value=None,
                      step_per_iteration=False):
    """The common loop: cross-entropy, backward, (clip), step; the mean batch loss."""
    model.train()
    total, batches = 0.0, 0
    for images, labels in loader:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        if clip_value:
            nn.utils.clip_grad_value_(model.parameters(), clip_value)
        optimizer.step()
        if step_per_iteration:
            scheduler.step()
        total += loss.item()
        batches += 1
    return total / max(batches, 1)


def train_one_epoch(paper, model, loader, optimizer, scheduler, spec, epoch):
    """The paper's own training step if it had one, else the common loop."""
    if paper.train_epoch is not None:
        return paper.train_epoch(model, loader, optimizer, scheduler, spec, epoch)
    return plain_train_epoch(model, loader, optimizer, scheduler, spec, epoch,
                             step_per_iteration=paper.step == "iteration")


def evaluate(model, loader):
    """(accuracy, mean batch loss) of the model in eval mode."""
    model.eval()
    correct, count, loss, batches = 0, 0, 0.0, 0
    with torch.no_grad():
        for images, labels in loader:
            logits = model(images)
            loss += F.cross_entropy(logits, labels).item()
            correct += (logits.argmax(1) == labels).sum().item()
            count += len(labels)
            batches += 1
    return correct / count, loss / max(batches, 1)


def run(paper, spec):
    """Trains `paper` as `spec` says; returns the record parity.py reads."""
    from data.cifar import load_cifar
    from training.allocator import keep_freed_memory

    # As run.py does for the Keras side: without it glibc faults every batch's
    # activations in again (MobileNetV2 here 2.5-3x slower; reports/results_notes.md).
    keep_freed_memory()
    torch.set_num_threads(os.cpu_count() or 1)
    seed_everything(spec["seed"])
    data = load_cifar("cifar10", spec.get("data_dir"))
    count = spec["train_images"] or len(data.x_train)
    train = Images(data.x_train[:count], data.y_train[:count], paper.train_transform(spec),
                   paper.as_image)
    test_transform = paper.test_transform()
    every_epoch = Images(data.x_test[:spec["eval_images"]], data.y_test[:spec["eval_images"]],
                         test_transform, paper.as_image)
    whole = Images(data.x_test, data.y_test, test_transform, paper.as_image)
    generator = torch.Generator().manual_seed(spec["seed"])
    loader = DataLoader(train, batch_size=paper.batch_size, shuffle=True, generator=generator)
    model = paper.network(spec)
    optimizer = paper.optimizer(model, spec)
    scheduler = paper.scheduler(optimizer, spec)
    history, started = [], time.time()
    for epoch in range(spec["epochs"]):
        rate = optimizer.param_groups[0]["lr"]
        loss = train_one_epoch(paper, model, loader, optimizer, scheduler, spec, epoch)
        accuracy, test_loss = evaluate(model, DataLoader(every_epoch, batch_size=500))
        if paper.step == "epoch":
            scheduler.step()
        elif paper.step == "plateau":
            scheduler.step(test_loss)
        history.append({"epoch": epoch, "loss": loss, "test_accuracy": accuracy,
                        "test_loss": test_loss, "lr": rate})
        print(f"{paper.name} seed {spec['seed']}: epoch {epoch + 1} of {spec['epochs']}: "
              f"loss {loss:.4f}, accuracy on {len(every_epoch)} test images "
              f"{100 * accuracy:.2f}%", flush=True)
    final, _ = evaluate(model, DataLoader(whole, batch_size=500))
    return {"side": "reference", "paper": paper.name, "spec": spec, "history": history,
            "final_test_accuracy": final, "seconds": time.time() - started,
            "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "versions": {"torch": torch.__version__,
                         "torchvision": __import__("torchvision").__version__}}


def main(paper, argv=None):
    parser = argparse.ArgumentParser(description=f"{paper.name}: the authors' training loop")
    parser.add_argument("--spec", required=True, help="JSON, as benchmarks/parity.py writes it")
    parser.add_argument("--json", required=True, help="where the record goes")
    args = parser.parse_args(argv)
    result = run(paper, json.loads(args.spec))
    with open(args.json + ".partial", "w") as stream:
        json.dump(result, stream, indent=1)
    os.replace(args.json + ".partial", args.json)
    return 0


# ---------------------------------------------------------------- shared building blocks
class BasicBlock(nn.Module):
    """conv3x3(stride)-BN-ReLU[-dropout]-conv3x3-BN, + shortcut (1x1 conv + BN where the
    shape changes), ReLU: the post-activation block kuangliu's, ResNet5M's and
    ModifiedResNet's code share."""

    def __init__(self, in_planes, planes, stride=1, dropout=0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x):
        out = self.dropout(F.relu(self.bn1(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def stage(block, in_planes, planes, count, stride, **kwargs):
    layers = []
    for index in range(count):
        layers.append(block(in_planes, planes, stride if index == 0 else 1, **kwargs))
        in_planes = planes
    return nn.Sequential(*layers)
