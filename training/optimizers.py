"""Optimizers with the semantics of the framework each paper trained in.

Papers 000-003 used torch.optim, whose `weight_decay` is *coupled*: wd * w is
added to the gradient of every trainable weight (BatchNorm and biases included)
after gradient clipping and before momentum or Adam's moments. Keras's own
`weight_decay=` is decoupled (AdamW-style) and is neither that nor paper 004's
per-layer L2 loss, so the torch-style optimizers below add the decay inside
`update_step`, which Keras calls after clipping.

`TorchSGD` also keeps PyTorch's momentum form (b = m*b + g; w -= lr*b), which
differs from Keras's (v = m*v - lr*g) for a few steps after every learning-rate
change, and holds momentum in a variable so that one-cycle can cycle it.
Paper 004 was Keras, so its recipes use the plain Keras optimizers.
"""

import math

import keras
from keras import ops


def _multi_tensor(optimizer_class):
    """Keras's own class for this backend. On PyTorch, `keras.optimizers.Adam()`
    (and Adagrad, RMSprop, SGD) is built as a subclass that updates all
    variables with torch._foreach kernels instead of one Python-level update per
    variable; Keras picks it for the exact public class only, so a subclass has
    to name it. `__new__` alone picks the class without building an optimizer."""
    return type(optimizer_class.__new__(optimizer_class))


def _torch_gradients(gradients, values):
    """The gradients as torch tensors of their variables' dtypes. Torch's own
    cast (free where the dtype matches); ops.convert_to_tensor's dispatch cost
    ~10 us a variable."""
    import torch

    return [g.to(v.dtype) if isinstance(g, torch.Tensor)
            else ops.convert_to_tensor(g, v.dtype) for g, v in zip(gradients, values)]


def _foreach_with_decay(gradients, values, decay):
    """The PyTorch backend's multi-tensor form of `_with_decay`."""
    import torch

    gradients = _torch_gradients(gradients, values)
    return torch._foreach_add(gradients, values, alpha=decay) if decay else gradients


def _with_decay(gradient, variable, decay):
    gradient = ops.cast(gradient, variable.dtype)
    if not decay:
        return gradient
    return ops.add(gradient, ops.multiply(variable, ops.cast(decay, variable.dtype)))


class _TorchClip:
    """On the PyTorch backend, `clipvalue` clips each gradient with torch.clamp
    directly; Keras's ops.clip converts and checks every gradient on the way
    (se_resnet_mixup's 87 gradients: 4.2 -> 1.1 ms a step on a 2-core AVX2 CPU,
    whatever the batch size). Out of place, as ops.clip: the gradients handed in
    stay as they are."""

    def _clip_gradients(self, grads):
        # Keras allows one of clipvalue, clipnorm and global_clipnorm.
        if keras.backend.backend() != "torch" or not (self.clipvalue and self.clipvalue > 0):
            return super()._clip_gradients(grads)
        import torch

        if not all(g is None or (isinstance(g, torch.Tensor) and g.is_floating_point())
                   for g in grads):
            return super()._clip_gradients(grads)
        bound = self.clipvalue
        with torch.no_grad():
            return [None if g is None else torch.clamp(g, -bound, bound) for g in grads]


@keras.saving.register_keras_serializable(package="cifar_repro")
class TorchSGD(_TorchClip, keras.optimizers.Optimizer):
    """torch.optim.SGD(lr, momentum, weight_decay, nesterov), dampening 0."""

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False,
                 coupled_weight_decay=0.0, name="torch_sgd", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if momentum < 0 or coupled_weight_decay < 0:
            raise ValueError(
                f"momentum and coupled_weight_decay must be >= 0; got {momentum}, "
                f"{coupled_weight_decay}."
            )
        self.initial_momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.coupled_weight_decay = float(coupled_weight_decay)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentum = self.add_variable(
            shape=(), initializer=keras.initializers.Constant(self.initial_momentum),
            name="momentum",
        )
        self.buffers = self.add_optimizer_variables(variables, "momentum_buffer")

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = _with_decay(gradient, variable, self.coupled_weight_decay)
        momentum = ops.cast(self.momentum, variable.dtype)
        buffer = self.buffers[self._get_variable_index(variable)]
        self.assign(buffer, ops.add(ops.multiply(buffer, momentum), gradient))
        step = ops.add(gradient, ops.multiply(buffer, momentum)) if self.nesterov else buffer
        self.assign_sub(variable, ops.multiply(step, learning_rate))

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if keras.backend.backend() != "torch":
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        # PyTorch backend: update_step's arithmetic on all variables at once, as
        # Keras's own SGD does there (one Python-level update per variable cost
        # ~3% of a ResNet-20 step on a CPU).
        import torch

        with torch.no_grad():
            values = [variable.value for variable in trainable_variables]
            buffers = [self.buffers[self._get_variable_index(variable)].value
                       for variable in trainable_variables]
            rate = ops.convert_to_tensor(learning_rate).to(values[0].dtype)
            momentum = float(self.momentum.value) if values[0].device.type == "cpu" else 0.0
            if momentum:
                # torch.optim.SGD(fused=True)'s kernel: the same update in one
                # pass over each variable, its gradient and its buffer (reading
                # the momentum variable is free on a CPU). Measured there (2-core
                # AVX-512 CPU): resnet5m_row6's update 6.3 -> 1.8 ms, ResNet-20's
                # 1.0 -> 0.4 ms (torch.optim's own loop: 3.1 and 0.5 ms). Without
                # momentum the kernel keeps no buffer, which the path below does
                # keep (one-cycle may raise the momentum later).
                torch._fused_sgd_(
                    values, _torch_gradients(grads, values), buffers,
                    weight_decay=self.coupled_weight_decay, momentum=momentum, lr=rate,
                    dampening=0.0, nesterov=self.nesterov, maximize=False, is_first_step=False)
                return
            grads = _foreach_with_decay(list(grads), values, self.coupled_weight_decay)
            momentum = self.momentum.value.to(values[0].dtype)
            torch._foreach_mul_(buffers, momentum)
            torch._foreach_add_(buffers, grads)
            steps = (torch._foreach_add(grads, torch._foreach_mul(buffers, momentum))
                     if self.nesterov else buffers)
            torch._foreach_add_(values, torch._foreach_mul(steps, -rate))

    def get_config(self):
        config = super().get_config()
        config.update(momentum=self.initial_momentum, nesterov=self.nesterov,
                      coupled_weight_decay=self.coupled_weight_decay)
        return config


class _CoupledDecay(_TorchClip):
    """Adds torch-style coupled weight decay to a Keras optimizer's update."""

    def __init__(self, *args, coupled_weight_decay=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.coupled_weight_decay = float(coupled_weight_decay)

    def update_step(self, gradient, variable, learning_rate):
        gradient = _with_decay(gradient, variable, self.coupled_weight_decay)
        return super().update_step(gradient, variable, learning_rate)

    def _parallel_update_step(self, grads, variables, learning_rate):
        # PyTorch backend only (Keras's multi-tensor update; update_step is not called).
        grads = _foreach_with_decay(list(grads), [v.value for v in variables],
                                    self.coupled_weight_decay)
        return super()._parallel_update_step(grads, variables, learning_rate)

    def get_config(self):
        config = super().get_config()
        config.update(coupled_weight_decay=self.coupled_weight_decay)
        return config


@keras.saving.register_keras_serializable(package="cifar_repro")
class TorchAdam(_CoupledDecay, _multi_tensor(keras.optimizers.Adam)):
    """torch.optim.Adam(weight_decay=wd): Adam with coupled L2, not AdamW."""

    def _parallel_update_step(self, grads, variables, learning_rate):
        values = [variable.value for variable in variables]
        if self.amsgrad or values[0].device.type != "cpu":
            return super()._parallel_update_step(grads, variables, learning_rate)
        # PyTorch backend on a CPU: torch.optim.Adam(fused=True)'s kernel, one
        # pass over each variable and its moments where Keras's multi-tensor
        # update makes about ten (modified_resnet's update 8.8 -> 1.5 ms on a
        # 2-core AVX-512 CPU; torch.optim's own loop 4.6). Its epsilon is added
        # after the bias correction, Keras's before; epsilon / sqrt(1 - beta_2**t)
        # makes it the same update. The kernel reads the step count t from a tensor.
        import torch

        step = float(self.iterations.value) + 1
        index = self._get_variable_index
        torch._fused_adam_(
            values, _torch_gradients(grads, values),
            [self._momentums[index(variable)].value for variable in variables],
            [self._velocities[index(variable)].value for variable in variables], [],
            [torch.tensor(step)] * len(values),
            lr=ops.convert_to_tensor(learning_rate).to(values[0].dtype),
            beta1=self.beta_1, beta2=self.beta_2, weight_decay=self.coupled_weight_decay,
            eps=self.epsilon / math.sqrt(1 - self.beta_2 ** step), amsgrad=False,
            maximize=False)


@keras.saving.register_keras_serializable(package="cifar_repro")
class TorchAdagrad(_CoupledDecay, _multi_tensor(keras.optimizers.Adagrad)):
    pass


@keras.saving.register_keras_serializable(package="cifar_repro")
class TorchRMSprop(_CoupledDecay, _multi_tensor(keras.optimizers.RMSprop)):
    pass


OPTIMIZERS = ("sgd", "adam", "adagrad", "rmsprop")
STYLES = ("torch", "keras")
# The momentum fields each optimizer reads (RMSprop's is its own; Adam and Adagrad have none).
MOMENTUM_FIELDS = {"sgd": ("momentum", "nesterov"), "adam": (), "adagrad": (),
                   "rmsprop": ("momentum",)}


def build_optimizer(name, *, learning_rate, style="torch", momentum=0.0, nesterov=False,
                    weight_decay=0.0, clipvalue=None):
    """name: sgd | adam | adagrad | rmsprop. style "torch" uses PyTorch's update
    rules and defaults (coupled `weight_decay`); "keras" the Keras optimizers as
    paper 004 used them (regularisation lives in the layers, so no decay here).
    `learning_rate` may be a float or a keras LearningRateSchedule."""
    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {name!r}; expected one of {OPTIMIZERS}.")
    if style not in STYLES:
        raise ValueError(f"Unknown optimizer style {style!r}; expected one of {STYLES}.")
    common = dict(learning_rate=learning_rate, clipvalue=clipvalue)
    if style == "keras":
        if weight_decay:
            raise ValueError(
                "Keras-style recipes regularise through per-layer L2; set "
                "optimizer.weight_decay to 0 or use optimizer.style=torch."
            )
        if name == "sgd":
            return keras.optimizers.SGD(momentum=momentum, nesterov=nesterov, **common)
        if name == "rmsprop":
            return keras.optimizers.RMSprop(momentum=momentum, **common)
        return {"adam": keras.optimizers.Adam, "adagrad": keras.optimizers.Adagrad}[name](**common)
    if name == "sgd":
        return TorchSGD(momentum=momentum, nesterov=nesterov,
                        coupled_weight_decay=weight_decay, **common)
    # PyTorch's defaults where they differ from Keras's.
    if name == "adam":
        return TorchAdam(epsilon=1e-8, coupled_weight_decay=weight_decay, **common)
    if name == "adagrad":
        return TorchAdagrad(initial_accumulator_value=0.0, epsilon=1e-10,
                            coupled_weight_decay=weight_decay, **common)
    return TorchRMSprop(rho=0.99, epsilon=1e-8, momentum=momentum,
                        coupled_weight_decay=weight_decay, **common)
