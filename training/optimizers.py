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
`TorchAdam`, `TorchAdagrad` and `TorchRMSprop` follow torch.optim's update rules
to the placement of epsilon (Keras puts it elsewhere in all three). Paper 004
was Keras, so its recipes use the plain Keras optimizers.
"""

import keras
import numpy as np
from keras import ops



def _torch_gradients(gradients, values):
    """The gradients as torch tensors of their variables' dtypes. Torch's own
    cast (free where the dtype matches), not ops.convert_to_tensor's dispatch."""
    import torch

    return [g.to(v.dtype) if isinstance(g, torch.Tensor)
            else ops.convert_to_tensor(g, v.dtype) for g, v in zip(gradients, values)]


def _contiguous(tensors):
    """PyTorch's fused and multi-tensor kernels walk a tensor in memory order, so a
    gradient laid out otherwise than its variable (a transposed view, a
    channels-last kernel gradient) is copied into the variable's layout first."""
    return [tensor if tensor.is_contiguous() else tensor.contiguous() for tensor in tensors]


def _foreach_with_decay(gradients, values, decay):
    """The PyTorch backend's multi-tensor form of `_with_decay`."""
    import torch

    gradients = _torch_gradients(gradients, values)
    return torch._foreach_add(gradients, values, alpha=decay) if decay else gradients


def _constant(value, dtype):
    """A Python number as a tensor of `dtype`, without passing through float32 (as
    ops.cast(0.99, "float64") does on TensorFlow: 1 - 0.99 then reads 0.00999999)."""
    return ops.convert_to_tensor(np.asarray(value, dtype=keras.backend.standardize_dtype(dtype)))


def _with_decay(gradient, variable, decay):
    gradient = ops.cast(gradient, variable.dtype)
    if not decay:
        return gradient
    return ops.add(gradient, ops.multiply(variable, _constant(decay, variable.dtype)))


class _TorchClip:
    """On the PyTorch backend, `clipvalue` clips each gradient with torch.clamp
    directly; Keras's ops.clip converts and checks every gradient on the way
    (measured: reports/throughput_notes.md). Out of place, as ops.clip: the gradients handed in
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
        # Keras's own SGD does there, not one Python-level update per variable.
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
                # the momentum variable is free on a CPU; measured: reports/throughput_notes.md). Without
                # momentum the kernel keeps no buffer, which the path below does
                # keep (one-cycle may raise the momentum later).
                torch._fused_sgd_(
                    values, _contiguous(_torch_gradients(grads, values)), buffers,
                    weight_decay=self.coupled_weight_decay, momentum=momentum, lr=rate,
                    dampening=0.0, nesterov=self.nesterov, maximize=False, is_first_step=False)
                return
            grads = _foreach_with_decay(_contiguous(_torch_gradients(grads, values)), values,
                                        self.coupled_weight_decay)
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


class _TorchUpdate(_TorchClip, keras.optimizers.Optimizer):
    """A torch.optim update rule: `update_step` (one variable, backend-neutral ops)
    on TensorFlow and JAX; on PyTorch `_torch_update` updates every variable at once."""

    def __init__(self, learning_rate=0.001, coupled_weight_decay=0.0, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        if coupled_weight_decay < 0:
            raise ValueError(f"coupled_weight_decay must be >= 0; got {coupled_weight_decay}.")
        self.coupled_weight_decay = float(coupled_weight_decay)

    def _slots(self, variable, *lists):
        index = self._get_variable_index(variable)
        return [slots[index] for slots in lists]

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if keras.backend.backend() != "torch":
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        import torch

        with torch.no_grad():
            values = [variable.value for variable in trainable_variables]
            grads = _contiguous(_torch_gradients(grads, values))
            rate = ops.convert_to_tensor(learning_rate).to(values[0].dtype)
            self._torch_update(values, grads, trainable_variables, rate)

    def get_config(self):
        config = super().get_config()
        config.update(coupled_weight_decay=self.coupled_weight_decay)
        return config


@keras.saving.register_keras_serializable(package="cifar_repro")
class TorchAdam(_TorchUpdate):
    """torch.optim.Adam(weight_decay=wd): Adam with coupled L2 (not AdamW), and
    PyTorch's epsilon, added after the bias correction:
    w -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
    Keras's Adam adds epsilon before it, which takes a larger step on weights whose
    gradients are near epsilon for the first thousands of steps."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 amsgrad=False, coupled_weight_decay=0.0, name="torch_adam", **kwargs):
        super().__init__(learning_rate=learning_rate, coupled_weight_decay=coupled_weight_decay,
                         name=name, **kwargs)
        if amsgrad:
            raise ValueError("TorchAdam implements torch.optim.Adam without amsgrad; got amsgrad=True.")
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)
        self.amsgrad = False

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._momentums, self._velocities = self.add_optimizer_variables(
            variables, ["momentum", "velocity"])

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        gradient = _with_decay(gradient, variable, self.coupled_weight_decay)
        step = ops.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = _constant(self.beta_1, dtype), _constant(self.beta_2, dtype)
        m, v = self._slots(variable, self._momentums, self._velocities)
        self.assign(m, ops.add(ops.multiply(m, beta_1),
                               ops.multiply(gradient, _constant(1 - self.beta_1, dtype))))
        self.assign(v, ops.add(ops.multiply(v, beta_2), ops.multiply(
            ops.square(gradient), _constant(1 - self.beta_2, dtype))))
        denominator = ops.add(ops.divide(ops.sqrt(v), ops.sqrt(1 - ops.power(beta_2, step))),
                              _constant(self.epsilon, dtype))
        step_size = ops.divide(ops.cast(learning_rate, dtype), 1 - ops.power(beta_1, step))
        self.assign_sub(variable, ops.multiply(ops.divide(m, denominator), step_size))

    def _torch_update(self, values, grads, variables, rate):
        import torch

        moments = [self._momentums[self._get_variable_index(v)].value for v in variables]
        velocities = [self._velocities[self._get_variable_index(v)].value for v in variables]
        # torch.optim.Adam(fused=True)'s kernel (CPU and CUDA): one pass over each
        # variable and its moments; it reads the step count t from a tensor.
        step = torch.tensor(float(self.iterations.value) + 1)
        torch._fused_adam_(
            values, grads, moments, velocities, [], [step] * len(values), lr=rate,
            beta1=self.beta_1, beta2=self.beta_2, weight_decay=self.coupled_weight_decay,
            eps=self.epsilon, amsgrad=False, maximize=False)

    def get_config(self):
        config = super().get_config()
        config.update(beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon)
        return config


@keras.saving.register_keras_serializable(package="cifar_repro")
class TorchAdagrad(_TorchUpdate):
    """torch.optim.Adagrad(weight_decay=wd): s += g^2; w -= lr * g / (sqrt(s) + eps).
    Keras's Adagrad divides by sqrt(s + eps)."""

    def __init__(self, learning_rate=0.01, initial_accumulator_value=0.0, epsilon=1e-10,
                 coupled_weight_decay=0.0, name="torch_adagrad", **kwargs):
        super().__init__(learning_rate=learning_rate, coupled_weight_decay=coupled_weight_decay,
                         name=name, **kwargs)
        self.initial_accumulator_value = float(initial_accumulator_value)
        self.epsilon = float(epsilon)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._accumulators = [
            self.add_variable_from_reference(
                variable, "accumulator",
                initializer=keras.initializers.Constant(self.initial_accumulator_value))
            for variable in variables]

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        gradient = _with_decay(gradient, variable, self.coupled_weight_decay)
        (total,) = self._slots(variable, self._accumulators)
        self.assign_add(total, ops.square(gradient))
        denominator = ops.add(ops.sqrt(total), _constant(self.epsilon, dtype))
        self.assign_sub(variable, ops.multiply(ops.divide(gradient, denominator),
                                               ops.cast(learning_rate, dtype)))

    def _torch_update(self, values, grads, variables, rate):
        import torch

        totals = [self._accumulators[self._get_variable_index(v)].value for v in variables]
        if self.coupled_weight_decay:
            grads = torch._foreach_add(grads, values, alpha=self.coupled_weight_decay)
        torch._foreach_addcmul_(totals, grads, grads)
        denominators = torch._foreach_sqrt(totals)
        torch._foreach_add_(denominators, self.epsilon)
        steps = torch._foreach_div(grads, denominators)
        torch._foreach_mul_(steps, rate)
        torch._foreach_sub_(values, steps)

    def get_config(self):
        config = super().get_config()
        config.update(initial_accumulator_value=self.initial_accumulator_value,
                      epsilon=self.epsilon)
        return config


@keras.saving.register_keras_serializable(package="cifar_repro")
class TorchRMSprop(_TorchUpdate):
    """torch.optim.RMSprop(alpha=rho, momentum, weight_decay=wd), not centred:
    a = rho*a + (1-rho)*g^2; d = g / (sqrt(a) + eps); with momentum b = m*b + d and
    w -= lr*b, else w -= lr*d. Keras's divides by sqrt(a + eps) and keeps lr inside
    its momentum buffer."""

    def __init__(self, learning_rate=0.01, rho=0.99, momentum=0.0, epsilon=1e-8,
                 coupled_weight_decay=0.0, name="torch_rmsprop", **kwargs):
        super().__init__(learning_rate=learning_rate, coupled_weight_decay=coupled_weight_decay,
                         name=name, **kwargs)
        self.rho, self.momentum, self.epsilon = float(rho), float(momentum), float(epsilon)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._averages = self.add_optimizer_variables(variables, "square_average")
        self._buffers = (self.add_optimizer_variables(variables, "momentum_buffer")
                         if self.momentum else [])

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        gradient = _with_decay(gradient, variable, self.coupled_weight_decay)
        (average,) = self._slots(variable, self._averages)
        self.assign(average, ops.add(ops.multiply(average, _constant(self.rho, dtype)), ops.multiply(
            ops.square(gradient), _constant(1 - self.rho, dtype))))
        step = ops.divide(gradient, ops.add(ops.sqrt(average), _constant(self.epsilon, dtype)))
        if self.momentum:
            (buffer,) = self._slots(variable, self._buffers)
            self.assign(buffer, ops.add(ops.multiply(buffer, _constant(self.momentum, dtype)), step))
            step = buffer
        self.assign_sub(variable, ops.multiply(step, ops.cast(learning_rate, dtype)))

    def _torch_update(self, values, grads, variables, rate):
        import torch

        index = self._get_variable_index
        averages = [self._averages[index(v)].value for v in variables]
        if self.coupled_weight_decay:
            grads = torch._foreach_add(grads, values, alpha=self.coupled_weight_decay)
        torch._foreach_mul_(averages, self.rho)
        torch._foreach_addcmul_(averages, grads, grads, value=1 - self.rho)
        denominators = torch._foreach_sqrt(averages)
        torch._foreach_add_(denominators, self.epsilon)
        steps = torch._foreach_div(grads, denominators)
        if self.momentum:
            buffers = [self._buffers[index(v)].value for v in variables]
            torch._foreach_mul_(buffers, self.momentum)
            torch._foreach_add_(buffers, steps)
            steps = buffers
        torch._foreach_sub_(values, torch._foreach_mul(steps, rate))

    def get_config(self):
        config = super().get_config()
        config.update(rho=self.rho, momentum=self.momentum, epsilon=self.epsilon)
        return config


@keras.saving.register_keras_serializable(package="cifar_repro")
class IterationSteps(keras.optimizers.schedules.LearningRateSchedule):
    """values[i] once `boundaries[i - 1]` optimizer steps are done: torch's
    MultiStepLR stepped after every iteration, whose rate for the update that
    follows step b is already the next value. (Keras's PiecewiseConstantDecay keeps
    the old value through step b itself, one update late.)"""

    def __init__(self, boundaries, values):
        if len(values) != len(boundaries) + 1:
            raise ValueError(f"IterationSteps needs one value more than its boundaries; got "
                             f"{len(boundaries)} boundaries and {len(values)} values.")
        self.boundaries = [int(b) for b in boundaries]
        self.values = [float(v) for v in values]

    def __call__(self, step):
        step = ops.cast(step, "int64")  # updates done before this one
        rate = ops.convert_to_tensor(self.values[0], "float32")
        for boundary, value in zip(self.boundaries, self.values[1:]):
            rate = ops.where(step >= boundary, value, rate)
        return rate

    def get_config(self):
        return {"boundaries": self.boundaries, "values": self.values}



BUILT = {(style, name) for style in ("torch", "keras")
         for name in ("sgd", "adam", "adagrad", "rmsprop")}


def build_optimizer(name, *, learning_rate, style="torch", momentum=0.0, nesterov=False,
                    weight_decay=0.0, clipvalue=None):
    """The Keras optimizer for arguments as an optimizer spec holds and has checked
    them (training/optimizer_specs.py, where the rules live). style "torch" uses
    PyTorch's update rules and defaults (coupled `weight_decay`); "keras" the Keras
    optimizers as paper 004 used them (regularisation lives in the layers).
    `learning_rate` may be a float or a keras LearningRateSchedule."""
    if (style, name) not in BUILT:
        raise ValueError(f"Unknown optimizer {name!r} in style {style!r}; expected one of "
                         f"{sorted(BUILT)}.")
    common = dict(learning_rate=learning_rate, clipvalue=clipvalue)
    if style == "keras":
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
