"""Every paper's network, by name. Importing the package registers them all."""

from models import cifar_resnet, kth, mobilenetv2  # noqa: F401  (registration)
from models.registry import MODELS, build_model, check_args, count_params  # noqa: F401
