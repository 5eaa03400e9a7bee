"""native_graph.Network: the suite's functional model, which on the PyTorch backend
runs its graph from a plan instead of Keras's Functional.call.

The plan calls plain layers' `call` directly (with the dtype handling of mixed
precision), frees each activation after its last reader, folds a ZeroPadding2D
into the valid convolution it feeds, lets a ReLU or residual Add overwrite an
activation only it reads, and in inference folds a BatchNorm that only reads a
convolution into that convolution. It walks Keras's private graph structures
(listed in KERAS_INTERNALS): when one is missing, or Keras is not the tested
version, the module warns once at import and Network is Keras's model unchanged.
The switch `native.NATIVE_TORCH` (a recipe's `fast_path`) turns the plan and the
kernels of models/native.py off together; saved models load either way.
"""

import warnings
import weakref

import keras
from keras import layers, tree
from keras.src import backend as keras_backend

from models.native import (BatchNormalization, Conv2D, DepthwiseConv2D, _groups, _native_conv,
                           _native_conv_call, _torch_conv2d, _torch_dtype, _use_torch)

TESTED_KERAS = "3.15.1"


def _keras_internals():
    """The private Keras names the plan reads, probed on a two-layer model; the
    missing ones, named."""
    inputs = keras.Input((2,))
    model = keras.Model(inputs, layers.Add()([layers.ReLU()(inputs), inputs]))
    node = next(node for nodes in getattr(model, "_nodes_by_depth", {0: []}).values()
                for node in nodes if not node.is_input) if hasattr(model, "_nodes_by_depth") else None
    probes = {
        "backend.get_autocast_scope": hasattr(keras_backend, "get_autocast_scope"),
        "backend.AutocastScope": hasattr(keras_backend, "AutocastScope"),
        "Functional._nodes_by_depth": node is not None,
        "Node.arguments._single_positional_tensor": node is not None and hasattr(
            getattr(node, "arguments", None), "_single_positional_tensor"),
        "Functional._standardize_inputs": hasattr(model, "_standardize_inputs"),
        "Functional._outputs_struct": hasattr(model, "_outputs_struct"),
        "Layer._convert_input_args": hasattr(model.layers[-1], "_convert_input_args"),
        "Layer._call_has_training_arg": hasattr(model.layers[-1], "_call_has_training_arg"),
    }
    return [name for name, present in probes.items() if not present]


def _plan_available():
    try:
        missing = _keras_internals()
    except ImportError as error:
        missing = [str(error)]
    if keras.__version__ != TESTED_KERAS or missing:
        warnings.warn(
            f"models/native_graph.py: the PyTorch-backend graph plan is off (Keras "
            f"{keras.__version__}, tested with {TESTED_KERAS}"
            + (f"; missing {', '.join(missing)}" if missing else "") + "); networks run "
            "Keras's own Functional.call.", RuntimeWarning, stacklevel=2)
        return False
    return True


PLAN_AVAILABLE = _plan_available()


def active():
    """Whether the fast path runs here: the PyTorch backend, the switch on and the
    Keras internals it reads present."""
    return _use_torch() and PLAN_AVAILABLE


# Keras layers whose __call__ adds nothing to call() for the tensors met inside
# a network but dtype handling (which _with_dtypes does): no masks or sublayers.
# A layer of the suite's own opts in with a class attribute `direct_call = True`.
_DIRECT_LAYERS = (layers.Conv2D, layers.DepthwiseConv2D, layers.BatchNormalization, layers.ReLU,
                  layers.Activation, layers.Add, layers.Multiply, layers.ZeroPadding2D,
                  layers.Dense, layers.GlobalAveragePooling2D, layers.MaxPooling2D,
                  layers.AveragePooling2D, layers.Flatten, layers.Dropout)


def _callable_directly(operation):
    """Whether Layer.__call__ adds nothing to `operation.call` but dtype handling."""
    return ((isinstance(operation, _DIRECT_LAYERS) or getattr(operation, "direct_call", False))
            and operation.activity_regularizer is None
            and getattr(operation, "quantization_mode", None) is None)


def _direct_call(operation, training):
    """`operation.call` with the training flag where it takes one, or None where
    the layer needs Keras's full __call__."""
    if not _callable_directly(operation):
        return None
    return _with_training(operation.call, operation, training)


_NO_SCOPE = object()  # no autocast scope open (a float32 model's __call__)

# Each Network's execution plans on the PyTorch backend, {(training, autocast
# dtype): plan}, kept outside the model so that copying or saving a model never
# carries a plan whose tensor ids belong to another graph.
_PLANS = weakref.WeakKeyDictionary()


@keras.saving.register_keras_serializable(package="cifar_repro")
class Network(keras.Model):
    """A functional model (`Network(inputs, outputs, name=...)`, as `keras.Model`)
    that, on the PyTorch backend, runs its graph calling each plain layer's
    `call` directly.

    Why: Keras's Layer.__call__ is costly on the PyTorch backend (dtype and
    structure checks, call-context bookkeeping, torch module hooks), most of a
    batch-1 forward (measurements: reports/throughput_notes.md). Only layers for which
    __call__ adds nothing but dtype handling are called directly (see
    `_DIRECT_LAYERS`), with that dtype handling (input casts, autocast scopes)
    done as __call__ does it; other layers keep their __call__, and masks and
    calls without an explicit training flag go through Keras's Functional.call
    unchanged. In the plan a ZeroPadding2D that only feeds a "valid"
    convolution is that convolution's own padding (`_padding_folds`), a ReLU
    or a residual Add writes over an activation no other layer reads
    (`_relu_in_place`, `_add_in_place`), and in
    inference each BatchNormalization that only reads a convolution is
    folded into it (`_folded_batch_norm`). On
    TensorFlow and JAX the graph is traced and compiled, so it is Keras's
    model as is.
    """

    def call(self, inputs, training=None, mask=None, **kwargs):
        if not (active() and isinstance(training, bool) and mask is None and not kwargs):
            return super().call(inputs, training=training, mask=mask, **kwargs)
        # The autocast scope that Model.__call__ opened (mixed precision) decides
        # which scope, if any, each layer's own __call__ would open.
        scope = keras_backend.get_autocast_scope()
        key = (training, None if scope is None else scope.dtype)
        plans = _PLANS.setdefault(self, {})
        if key not in plans:
            plans[key] = self._torch_plan(training, key[1] if scope is not None else _NO_SCOPE)
        tensors = dict(zip(self._input_ids, tree.flatten(self._standardize_inputs(inputs))))
        for call, single, bind, outputs, release in plans[key]:
            if single is not None:
                result = call(tensors[single])
            else:
                args, kwargs = bind(tensors)
                result = call(*args, **kwargs)
            if len(outputs) == 1 and not isinstance(result, (list, tuple, dict)):
                tensors[outputs[0]] = result
            else:
                tensors.update(zip(outputs, tree.flatten(result)))
            for released in release:
                del tensors[released]
        outputs = tree.pack_sequence_as(self._outputs_struct,
                                        [tensors[id(x)] for x in self.outputs])
        if isinstance(outputs, (list, tuple)) and len(outputs) == 1:
            return outputs[0]
        return outputs

    def _torch_plan(self, training, scope_dtype=_NO_SCOPE):
        """The graph as a list of steps, in Functional's order, each step
        (callable, id of its single input tensor or None, a function from the
        computed tensors to its (args, kwargs), ids of its outputs, ids of the
        tensors no later step reads).

        Why a plan rather than Functional's walk: the walk re-derives the
        order and argument mapping on every call, and keeps every activation alive until the call returns;
        releasing each one after its last reader lets PyTorch's allocator hand
        the same, cache-warm memory to the next layer during inference (in
        training autograd keeps what the backward pass needs either way)."""
        computed = {id(x) for x in self.inputs}
        nodes = []
        for depth in sorted(self._nodes_by_depth, reverse=True):
            for node in self._nodes_by_depth[depth]:
                if not node.operation or node.is_input:
                    continue
                if any(id(x) not in computed for x in node.input_tensors):
                    continue  # not connected to the inputs, as Functional skips it
                nodes.append(node)
                computed.update(id(x) for x in node.outputs)
        kept = {id(x) for x in self.outputs}
        producers = {id(x): index for index, node in enumerate(nodes) for x in node.outputs}
        readers = {}
        for index, node in enumerate(nodes):
            for x in node.input_tensors:
                readers.setdefault(id(x), []).append(index)

        def sole_reader(tensor, index):
            """The producing node of `tensor` where node `index` is its only reader."""
            key = id(tensor)
            if key in kept or readers.get(key) != [index] or key not in producers:
                return None
            return nodes[producers[key]]

        # A ZeroPadding2D that only feeds a "valid" convolution becomes that
        # convolution's own padding. Inference: a BatchNormalization that only
        # reads a convolution runs inside it (_folded_batch_norm). Training and
        # inference: a ReLU, or a two-way Add, that is the only reader of a
        # fresh activation writes its result over it.
        pads = self._padding_folds(nodes, sole_reader)
        folds = {} if training else self._batch_norm_folds(nodes, sole_reader)
        folded = set(folds.values()) | set(pads.values())
        steps = []  # (callable, single input id, binder, output ids, input ids)
        for index, node in enumerate(nodes):
            if index in folded:
                continue  # computed by its convolution's step
            operation = self._get_operation_for_node(node)
            inputs, outputs = node.input_tensors, node.outputs
            single = node.arguments._single_positional_tensor
            pad = None
            if index in pads:  # the convolution reads what the padding read
                pad_node = nodes[pads[index]]
                pad = self._get_operation_for_node(pad_node)
                inputs = pad_node.input_tensors
                single = pad_node.arguments._single_positional_tensor
            if index in folds:
                norm_node = nodes[folds[index]]
                call = _with_dtypes(operation, _folded_batch_norm(
                    operation, self._get_operation_for_node(norm_node), pad), scope_dtype)
                outputs = norm_node.outputs
            elif pad is not None:
                call = _with_dtypes(operation, _padded_conv(operation, pad), scope_dtype)
            elif (_plain_relu(operation) and len(node.input_tensors) == 1
                  and _fresh_output(sole_reader(node.input_tensors[0], index))):
                call = _with_dtypes(operation, _relu_in_place(operation), scope_dtype)
            elif _plain_add(operation, node) and any(
                    _fresh_output(sole_reader(x, index)) for x in node.input_tensors):
                target = next(k for k, x in enumerate(node.input_tensors)
                              if _fresh_output(sole_reader(x, index)))
                call = _with_dtypes(operation, _add_in_place(operation, target), scope_dtype)
            else:
                call = _direct_call(operation, training)
                if call is None:
                    call = _with_training(operation, operation, training)
                else:
                    call = _with_dtypes(operation, call, scope_dtype)
            steps.append((call, None if single is None else id(single), _binder(node.arguments),
                          tuple(id(x) for x in outputs), [id(x) for x in inputs]))
        last_reader = {key: index for index, step in enumerate(steps) for key in step[4]}
        return [(call, single, bind, outputs,
                 tuple({key for key in inputs if last_reader[key] == index and key not in kept}))
                for index, (call, single, bind, outputs, inputs) in enumerate(steps)]

    def _padding_folds(self, nodes, sole_reader):
        """{index of a "valid" convolution: index of the ZeroPadding2D that
        only it reads}, for the symmetric paddings the convolution can add
        itself (`_padded_conv`): papers 000-003's stride-2 convolutions, padded
        as PyTorch's Conv2d(padding=1) pads. Keras's ZeroPadding2D writes a
        padded copy of the activation (and the backward pass crops its
        gradient); PyTorch's convolution reads the zeros it needs."""
        folds = {}
        for index, node in enumerate(nodes):
            conv = self._get_operation_for_node(node)
            if not (isinstance(conv, (Conv2D, DepthwiseConv2D)) and conv.padding == "valid"
                    and conv.data_format == "channels_last" and _callable_directly(conv)
                    and len(node.input_tensors) == 1
                    and node.arguments._single_positional_tensor is not None):
                continue
            pad_node = sole_reader(node.input_tensors[0], index)
            if (pad_node is not None and len(pad_node.input_tensors) == 1
                    and pad_node.arguments._single_positional_tensor is not None
                    and _folded_padding(self._get_operation_for_node(pad_node), conv)):
                folds[index] = nodes.index(pad_node)
        return folds

    def _batch_norm_folds(self, nodes, sole_reader):
        """{index of a convolution: index of the BatchNormalization that is the
        only reader of its output}, for the pairs `_folded_batch_norm` can run
        as one convolution in inference."""
        folds = {}
        for index, node in enumerate(nodes):
            if len(node.input_tensors) != 1 or not _foldable_norm(
                    self._get_operation_for_node(node), node.input_tensors[0]):
                continue
            conv_node = sole_reader(node.input_tensors[0], index)
            if (conv_node is not None and len(conv_node.outputs) == 1
                    and conv_node.arguments._single_positional_tensor is not None
                    and _foldable_conv(self._get_operation_for_node(conv_node))
                    and conv_node.operation.compute_dtype == node.operation.compute_dtype):
                folds[nodes.index(conv_node)] = index
        return folds

    @property
    def _input_ids(self):
        return [id(x) for x in self.inputs]


def _with_dtypes(layer, call, scope_dtype):
    """`call` with what Layer.__call__ does about dtypes: floating inputs cast to
    the layer's input dtype, and the autocast scope (variables read in the
    compute dtype) that __call__ would open, given the scope open around the
    model (`scope_dtype`, or _NO_SCOPE). A float32 layer in a float32 model
    needs neither and gets `call` itself."""
    backend = keras_backend
    if scope_dtype is _NO_SCOPE:
        new_scope = (layer.compute_dtype if layer.compute_dtype != layer.variable_dtype
                     else _NO_SCOPE)
    elif not layer.autocast or not backend.is_float_dtype(layer.compute_dtype):
        new_scope = None
    elif scope_dtype != layer.compute_dtype:
        new_scope = layer.compute_dtype
    else:
        new_scope = _NO_SCOPE
    cast_to = (_torch_dtype(layer.input_dtype)
               if layer.autocast and layer._convert_input_args
               and backend.is_float_dtype(layer.input_dtype) else None)
    if new_scope is _NO_SCOPE and (cast_to is None or layer.input_dtype == "float32"
                                    and scope_dtype is _NO_SCOPE):
        return call  # float32 throughout: nothing to cast, no scope

    def cast(value):
        if isinstance(value, list):
            return [cast(item) for item in value]
        if (cast_to is not None and hasattr(value, "dtype") and value.dtype.is_floating_point
                and value.dtype != cast_to):
            return value.to(cast_to)
        return value

    def mixed_call(*args, **kwargs):
        args = [cast(value) for value in args]
        if new_scope is _NO_SCOPE:
            return call(*args, **kwargs)
        with backend.AutocastScope(new_scope):
            return call(*args, **kwargs)

    return mixed_call


def _folded_padding(pad, conv):
    """(rows, columns) of zeros on each side where ZeroPadding2D `pad` can be
    `conv`'s own padding, else None."""
    if not (isinstance(pad, layers.ZeroPadding2D) and _callable_directly(pad)
            and pad.data_format == "channels_last" and pad.compute_dtype == conv.compute_dtype):
        return None
    (top, bottom), (left, right) = pad.padding
    return (top, left) if top == bottom and left == right else None


def _padded_conv(conv, pad):
    """`conv(pad(x))` as one convolution that pads as it reads (see
    Network._padding_folds); the same sums, so the same values."""
    padding = _folded_padding(pad, conv)

    def call(inputs):
        if not _native_conv(conv, inputs):
            return conv.call(pad.call(inputs))
        return _native_conv_call(conv, inputs, padding)

    return call


def _float32_variables(layer):
    return layer.variable_dtype == "float32"


def _foldable_conv(layer):
    return (isinstance(layer, (Conv2D, DepthwiseConv2D)) and _float32_variables(layer)
            and _callable_directly(layer) and layer.data_format == "channels_last"
            and layer.activation in (None, keras.activations.linear))


def _foldable_norm(layer, inputs):
    return (isinstance(layer, BatchNormalization) and _float32_variables(layer)
            and _callable_directly(layer) and not layer.renorm
            and not layer.synchronized and len(inputs.shape) == 4 and layer.axis in (-1, 3))


def _folded_batch_norm(conv, norm, pad=None):
    """`norm(conv(x))` in inference as one convolution: the BatchNorm's scale
    folded into the kernel, its shift into the bias (as TensorRT, ONNX Runtime
    and torch.fx's fuser do for inference). Computes the same function; in
    float32 the rounding differs by about 1e-7 of the output's range. Under
    mixed precision the fold is computed from the float32 variables and cast
    to the compute dtype once, and the activation is rounded to bf16/fp16
    once (Keras rounds it after the convolution and again after the
    BatchNorm).

    Why: inference then makes one pass over each activation instead of two;
    eager PyTorch (and this suite in training) runs the BatchNorm separately.
    The folded weights are cached while no variable of the pair changes
    (torch counts in-place updates in each tensor's _version: an optimizer
    step, an assign, loading weights); with gradients enabled they are
    computed anew on each call, so gradients reach the variables. `pad`, a
    ZeroPadding2D that only feeds `conv`, is folded into it too."""
    import torch

    variables = list(conv.variables) + list(norm.variables)
    cache = {}

    def fold():
        inverse = torch.rsqrt(norm.moving_variance.value + norm.epsilon)
        scale = inverse * norm.gamma.value if norm.scale else inverse
        shift = -norm.moving_mean.value * scale
        if norm.center:
            shift = shift + norm.beta.value
        if conv.use_bias:
            shift = shift + conv.bias.value * scale
        kernel = conv.torch_kernel() * scale.reshape(-1, 1, 1, 1)
        dtype = _torch_dtype(conv.compute_dtype)
        return kernel.to(dtype).contiguous(), shift.to(dtype)

    def weights():
        # The variables as stored (float32), not as an autocast scope reads them.
        with keras_backend.AutocastScope(None):
            if torch.is_grad_enabled():
                return fold()
            tensors = [variable.value for variable in variables]
            key = [(id(tensor), tensor._version) for tensor in tensors]
            if cache.get("key") != key:
                # The tensors stay referenced with the key, so no id is reused.
                cache.update(key=key, tensors=tensors, weights=fold())
            return cache["weights"]

    padding = (0, 0) if pad is None else _folded_padding(pad, conv)

    def call(inputs):
        if not _native_conv(conv, inputs):
            padded = inputs if pad is None else pad.call(inputs)
            return norm.call(conv.call(padded), training=False)
        kernel, bias = weights()
        return _torch_conv2d(inputs, kernel, conv, _groups(conv), bias, padding)

    return call


def _plain_relu(layer):
    return (isinstance(layer, layers.ReLU) and _callable_directly(layer) and layer.max_value is None
            and not layer.negative_slope and not layer.threshold)


def _fresh_output(node):
    """Whether `node` (or None) writes its output into new memory that its own
    backward pass does not read: a view of another tensor must not be
    overwritten, nor an output autograd keeps (a convolution's activation).
    Autograd would refuse the backward pass otherwise; this keeps it from
    being tried."""
    if node is None:
        return False
    operation = node.operation
    if isinstance(operation, (layers.Conv2D, layers.DepthwiseConv2D)):
        return operation.activation in (None, keras.activations.linear)
    return isinstance(operation, (layers.BatchNormalization, layers.Add))


def _writable(inputs):
    """(the tensor to overwrite for `inputs`, whether `inputs` is its NHWC
    permutation), or None where overwriting would cost a copy.

    Under autograd an in-place op on a view makes the backward pass copy the
    whole gradient (CopySlices), and the native layers' outputs are views: an
    NHWC permutation of PyTorch's channels-last result. That result is
    overwritten then, and permuted again."""
    import torch

    base = inputs._base
    if base is None or not torch.is_grad_enabled():
        return inputs, False
    if base.dim() == 4:
        nhwc = base.permute(0, 2, 3, 1)
        if (nhwc.shape == inputs.shape and nhwc.stride() == inputs.stride()
                and nhwc.storage_offset() == inputs.storage_offset()):
            return base, True
    return None


def _relu_in_place(layer):
    """A ReLU that overwrites its input, which no other layer reads: the same
    values and gradients without a new activation (eager PyTorch code does
    this with nn.ReLU(inplace=True))."""
    import torch

    def call(inputs):
        writable = _writable(inputs) if type(inputs) is torch.Tensor else None
        if writable is None:
            return layer.call(inputs)
        target, permuted = writable
        outputs = torch.relu_(target)
        return outputs.permute(0, 2, 3, 1) if permuted else outputs

    return call


def _plain_add(layer, node):
    return (type(layer) is layers.Add and _callable_directly(layer)
            and len(node.input_tensors) == 2)


def _add_in_place(layer, target):
    """A residual Add that accumulates into its input number `target`, a fresh
    activation no other layer reads (`out += shortcut` in the papers' PyTorch
    blocks): the same sums without a new activation."""
    import torch

    def call(inputs):
        first, second = inputs[target], inputs[1 - target]
        writable = (_writable(first) if type(first) is torch.Tensor
                    and type(second) is torch.Tensor and first.shape == second.shape
                    and first.dtype == second.dtype else None)
        if writable is None:
            return layer.call(inputs)
        tensor, permuted = writable
        tensor.add_(second.permute(0, 3, 1, 2) if permuted else second)
        return tensor.permute(0, 2, 3, 1) if permuted else tensor

    return call


def _binder(arguments):
    """tensors -> (args, kwargs) for a node's recorded arguments. The two shapes
    a functional CNN records, tensors as positional arguments (BatchNormalization
    also records mask=None) and one list of tensors (Add, Multiply), are bound
    by index; anything else goes through Keras's own fill_in (a tree walk per
    node)."""
    args, kwargs = arguments.args, arguments.kwargs
    if not any(isinstance(value, keras.KerasTensor) for value in tree.flatten(kwargs)):
        if all(isinstance(value, keras.KerasTensor) for value in args):
            keys = [id(value) for value in args]
            return lambda tensors: ([tensors[key] for key in keys], kwargs)
        if (len(args) == 1 and isinstance(args[0], list)
                and all(isinstance(value, keras.KerasTensor) for value in args[0])):
            keys = [id(value) for value in args[0]]
            return lambda tensors: (([tensors[key] for key in keys],), kwargs)
    return arguments.fill_in


def _with_training(function, operation, training):
    """`function` (the operation's __call__ or call) with the model's training
    flag where the operation takes one: the model's flag wins, as in
    Functional.call."""
    if not getattr(operation, "_call_has_training_arg", False):
        return function

    def call(*args, **kwargs):
        kwargs["training"] = training
        return function(*args, **kwargs)

    return call
