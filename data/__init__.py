"""CIFAR data: loading, normalisation, augmentation and the batch pipeline."""
