"""The PyTorch-backend fast path (models/native.py's kernels, native_graph.py's
plan) against Keras's own implementation: outputs, gradients, moving statistics,
the plan's bookkeeping, bf16, dropout, every paper network both ways, and saved
models across the switch. These run only under KERAS_BACKEND=torch;
tests/test_models.py runs this module that way from the default suite."""

import numpy as np
import pytest

import keras

pytestmark = pytest.mark.skipif(keras.backend.backend() != "torch",
                                reason="the PyTorch backend's fast path (KERAS_BACKEND=torch)")

if keras.backend.backend() == "torch":
    import torch

    from models import native, native_graph


@pytest.fixture(autouse=True)
def float32_and_fast_path():
    """Each test starts and ends with the fast path on, in float32."""
    yield
    native.NATIVE_TORCH = True
    keras.config.set_dtype_policy("float32")


@pytest.fixture
def calls(monkeypatch):
    """How often the native kernels and the plan's direct calls ran."""
    counted = {"conv": 0, "batch_norm": 0, "direct": 0}
    for name, module, attribute in (("conv", native, "_torch_conv2d"),
                                    ("batch_norm", torch.nn.functional, "batch_norm"),
                                    ("direct", native_graph, "_direct_call")):
        def wrapper(*args, _name=name, _original=getattr(module, attribute), **kwargs):
            result = _original(*args, **kwargs)
            counted[_name] += result is not None  # Keras's own path calls none of these
            return result
        monkeypatch.setattr(module, attribute, wrapper)
    return counted


def small_network():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = native.Conv2D(6, 3, padding="same", use_bias=True, activation="relu")(inputs)
    x = native.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)
    x = keras.layers.ZeroPadding2D(1)(x)
    x = native.Conv2D(8, 3, strides=2, padding="valid", use_bias=False)(x)
    x = native.DepthwiseConv2D(3, padding="same", depth_multiplier=2, activation="relu")(x)
    x = native.BatchNormalization()(x)
    y = native.Conv2D(16, 1, strides=2, padding="same")(x)   # no padding
    z = native.Conv2D(16, 3, strides=2, padding="same")(x)   # Keras pads bottom/right only
    x = keras.layers.Add()([y, z])
    outputs = keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(x))
    return native_graph.Network(inputs, outputs)


def relative(a, b):
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


IMAGES = np.random.default_rng(1).normal(size=(5, 8, 8, 3)).astype("float32")


def test_native_layers_match_keras_training_and_inference(calls):
    """Outputs, input and weight gradients, moving statistics and inference; the
    kernels run (five convolutions and two BatchNorms, training and inferring) and
    the plan calls eight of eleven layers directly; with the switch off, none."""
    results, used = [], []
    for use_native in (True, False):
        native.NATIVE_TORCH = use_native
        model = small_network()
        before = dict(calls)
        images = torch.tensor(IMAGES, requires_grad=True)
        out = model(images, training=True)
        out.square().sum().backward()
        results.append([out.detach().numpy(), images.grad.numpy(),
                        *[v.value.grad.numpy() for v in model.trainable_variables],
                        *[v.numpy() for v in model.non_trainable_variables],
                        keras.ops.convert_to_numpy(model(IMAGES, training=False))])
        used.append({key: calls[key] - before[key] for key in calls})
    assert used == [{"conv": 10, "batch_norm": 4, "direct": 16},
                    {"conv": 0, "batch_norm": 0, "direct": 0}]
    assert len(results[0]) == 2 + 15 + 4 + 1
    assert max(relative(a, b) for a, b in zip(*results)) < 1e-5


def test_plan_frees_each_activation_once_after_its_last_reader():
    """A step reads what its node reads, or, through a node folded into it (the
    ZeroPadding2D before the strided conv), what that node reads."""
    model = small_network()
    plan = model._torch_plan(False)
    nodes = [node for depth in model._nodes_by_depth.values() for node in depth
             if not node.is_input]
    producer = {id(x): node for node in nodes for x in node.outputs}
    computed = {key for step in plan for key in step[3]}

    def reads(node):
        for tensor in node.input_tensors:
            if id(tensor) in producer and id(tensor) not in computed:
                yield from reads(producer[id(tensor)])
            else:
                yield tensor

    readers = {}
    for index, step in enumerate(plan):
        for tensor in reads(next(node for node in nodes if id(node.outputs[0]) == step[3][0])):
            readers.setdefault(id(tensor), []).append(index)
    released = [(key, index) for index, step in enumerate(plan) for key in step[4]]
    outputs = {id(x) for x in model.outputs}
    assert len(plan) == 10
    assert len(released) == len({key for key, _ in released})
    assert all(index == max(readers[key]) for key, index in released)
    assert {key for key, _ in released} == set(readers) - outputs


def test_mixed_precision_plan_equals_functional_call(calls):
    """The plan casts inputs and opens the autocast scopes as each layer's __call__
    would: its result equals Functional.call's (training=None) bit for bit; against
    Keras's own layers in bf16 within bf16's rounding."""
    keras.config.set_dtype_policy("mixed_bfloat16")
    model = small_network()
    before = calls["direct"]
    out = model(IMAGES, training=False)
    assert calls["direct"] - before == 8 and out.dtype == torch.bfloat16
    assert float((out.float() - model(IMAGES).detach().float()).abs().max()) == 0.0
    mixed = []
    for use_native in (True, False):
        native.NATIVE_TORCH = use_native
        images = torch.tensor(IMAGES, requires_grad=True)
        out = small_network()(images, training=True)
        out.float().square().sum().backward()
        mixed.append([out.detach().float().numpy(), images.grad.numpy()])
    assert max(relative(a, b) for a, b in zip(*mixed)) < 2e-2  # bf16 has 8 mantissa bits


def folded_network():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    conv = native.Conv2D(6, 3, padding="same", use_bias=True)
    norm = native.BatchNormalization()
    depthwise = native.DepthwiseConv2D(3, padding="same", depth_multiplier=2)
    x = keras.layers.ReLU(name="relu_fresh")(norm(conv(inputs)))  # folded
    y = native.BatchNormalization(center=False, scale=False)(depthwise(x))  # folded
    z = native.Conv2D(12, 1)(x)
    # z is read twice: not folded, and the Add accumulates into the BatchNorm's output.
    z = keras.layers.Add(name="add_shared")([z, native.BatchNormalization()(z)])
    x = keras.layers.ReLU(name="relu_add")(keras.layers.Add(name="add_fresh")([y, z]))
    x = keras.layers.ReLU(name="relu_view")(keras.layers.Reshape((8, 8, 12))(x))  # a view: kept
    strided = native.Conv2D(5, 3, strides=2, use_bias=False)
    x = native.BatchNormalization()(strided(keras.layers.ZeroPadding2D(1)(x)))  # one conv
    x = keras.layers.ReLU(name="relu_strided")(x)
    outputs = keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(x))
    model = native_graph.Network(inputs, outputs)
    rng = np.random.default_rng(2)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            for variable in layer.variables:
                variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype("float32"))
    return model, conv, norm, depthwise, strided


FOLD_IMAGES = np.random.default_rng(3).normal(size=(3, 8, 8, 3)).astype("float32")


def test_inference_folds_batch_norms_and_relus_overwrite_in_place(monkeypatch):
    """A BatchNorm that only reads a convolution runs inside it; a ReLU or Add that
    only reads a fresh activation overwrites it; against Functional's walk, before
    and after the variables change (folded weights re-read) and with gradients."""
    in_place, added = [], []
    relu, add = native_graph._relu_in_place, native_graph._add_in_place
    monkeypatch.setattr(native_graph, "_relu_in_place",
                        lambda layer: in_place.append(layer.name) or relu(layer))
    monkeypatch.setattr(native_graph, "_add_in_place",
                        lambda layer, k: added.append((layer.name, k)) or add(layer, k))
    model, conv, norm, depthwise, strided = folded_network()
    images = torch.tensor(FOLD_IMAGES)
    kept = images.clone()

    def walk():
        return super(native_graph.Network, model).call(images, training=False)

    with torch.no_grad():
        pairs = [(model(images, training=False), walk())]
        conv.kernel.assign(conv.kernel + 0.1)
        norm.moving_variance.assign(norm.moving_variance * 3.0)
        pairs.append((model(images, training=False), walk()))
    results = []
    for function in (lambda: model(images, training=False), walk):
        out = function()
        results.append([out.detach(), *torch.autograd.grad(
            out.square().sum(), [conv.kernel.value, depthwise.kernel.value, strided.kernel.value])])
    pairs += list(zip(*results))
    assert (len(model._torch_plan(False)), len(model._torch_plan(True))) == (14, 17)
    assert sorted(set(in_place)) == ["relu_add", "relu_fresh", "relu_strided"]
    assert torch.equal(images, kept)  # the model's input is never overwritten
    assert sorted(set(added)) == [("add_fresh", 0), ("add_shared", 1)]
    assert max(float((a - b).abs().max() / (b.abs().max() + 1e-12)) for a, b in pairs) < 1e-5


def test_training_relus_overwrite_in_place_with_keras_gradients(monkeypatch):
    """The same three ReLUs overwrite their input in training (never a view);
    outputs and every gradient as Functional's walk computes them (relative to
    each array's scale, at least 1: a conv bias before a BatchNorm has a zero
    gradient computed as rounding noise)."""
    model = folded_network()[0]
    images = torch.tensor(FOLD_IMAGES)
    relu_calls = []
    original = torch.relu_
    monkeypatch.setattr(torch, "relu_", lambda tensor: relu_calls.append(tensor._base is None)
                        or original(tensor))
    results = []
    for function in (lambda: model(images, training=True),
                     lambda: super(native_graph.Network, model).call(images, training=True)):
        out = function()
        results.append([out.detach(), *torch.autograd.grad(
            out.square().sum(), [v.value for v in model.trainable_variables])])
    assert relu_calls == [True, True, True] and len(results[0]) == 16
    assert max(float((a - b).abs().max() / max(b.abs().max(), 1.0))
               for a, b in zip(*results)) < 1e-6


def test_folded_inference_in_mixed_precision():
    """Folded from the float32 variables: one bf16 rounding of each activation where
    Keras's layers round twice."""
    keras.config.set_dtype_policy("mixed_bfloat16")
    model = folded_network()[0]
    images = torch.tensor(FOLD_IMAGES)
    with torch.no_grad():
        out = model(images, training=False)
        reference = super(native_graph.Network, model).call(images, training=False)
    assert len(model._torch_plan(False, "bfloat16")) == 14 and out.dtype == torch.bfloat16
    assert float((out.float() - reference.float()).abs().max()
                 / reference.float().abs().max()) < 2e-2


def bf16_errors(computed, wanted):  # each bf16 result against its float64 twin
    return [float((a.double() - b).abs().max() / b.abs().max()) for a, b in zip(computed, wanted)]


def test_strided_depthwise_bf16_takes_its_input_gradient_in_float32(monkeypatch):
    """native._strided_depthwise_conv against float64 on the same bf16 values, for an
    asymmetric "same" padding (8x8 input) and a symmetric one (9x9)."""
    keras.config.set_dtype_policy("mixed_bfloat16")
    used = []
    original = native._strided_depthwise_conv
    monkeypatch.setattr(native, "_strided_depthwise_conv", lambda: used.append(1) or original())
    rng = np.random.default_rng(4)
    errors = []
    for size in (8, 9):
        layer = native.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2,
                                       bias_initializer="random_normal")
        images = torch.tensor(rng.normal(size=(4, size, size, 5)), dtype=torch.bfloat16,
                              requires_grad=True)
        out = layer(images)
        grad = torch.tensor(rng.normal(size=tuple(out.shape)), dtype=torch.bfloat16)
        computed = [out, *torch.autograd.grad(out, [images, layer.kernel.value, layer.bias.value],
                                              grad)]
        top = 0 if size == 8 else 1  # Keras's "same" pads an even input bottom/right only
        x64 = torch.nn.functional.pad(images.detach().double().permute(0, 3, 1, 2),
                                      (top, 1, top, 1)).requires_grad_()
        kernel64 = layer.kernel.value.detach().to(torch.bfloat16).double().requires_grad_()
        bias64 = layer.bias.value.detach().to(torch.bfloat16).double().requires_grad_()
        out64 = torch.nn.functional.conv2d(x64, kernel64.reshape(3, 3, 1, 10).permute(3, 2, 0, 1),
                                           bias64, stride=2, groups=5).permute(0, 2, 3, 1)
        wanted = [out64, *torch.autograd.grad(out64, [x64, kernel64, bias64], grad.double())]
        wanted[1] = wanted[1][:, :, top:top + size, top:top + size].permute(0, 2, 3, 1)
        errors += bf16_errors(computed, wanted)
    with torch.no_grad():
        layer(images)  # nothing to differentiate: the plain convolution
    assert len(used) == 2 and computed[1].dtype == torch.bfloat16
    assert max(errors) < 1e-2  # one bf16 rounding (2**-8) of each result


def test_bf16_batch_norm_on_the_column_view():
    """Channels that are not a multiple of 16 run on native._column_batch_norm:
    outputs, gradients and moving statistics against float64 on the same bf16
    values, for 24 channels over 4x8x8 (16 pixels a row) and 40 over 4x6x6 (8 a
    row); 48 channels take PyTorch's kernel."""
    keras.config.set_dtype_policy("mixed_bfloat16")
    rng = np.random.default_rng(5)
    used, errors = [], []
    original = native._column_batch_norm
    native._column_batch_norm = lambda: used.append(1) or original()
    try:
        for channels, size in ((24, 8), (40, 6), (48, 4)):
            layer = native.BatchNormalization(momentum=0.5, epsilon=1e-3,
                                              gamma_initializer="random_uniform",
                                              beta_initializer="random_normal")
            images = torch.tensor(rng.normal(1.0, 2.0, size=(4, size, size, channels)),
                                  dtype=torch.bfloat16, requires_grad=True)
            out = layer(images, training=True)
            grad = torch.tensor(rng.normal(size=tuple(out.shape)), dtype=torch.bfloat16)
            computed = [out, *torch.autograd.grad(
                out, [images, layer.gamma.value, layer.beta.value], grad),
                layer.moving_mean.value, layer.moving_variance.value]
            x64 = images.detach().double().requires_grad_()
            gamma64 = layer.gamma.value.detach().double().requires_grad_()
            beta64 = layer.beta.value.detach().double().requires_grad_()
            mean64, variance64 = x64.mean((0, 1, 2)), x64.var((0, 1, 2), correction=0)
            out64 = (x64 - mean64) / torch.sqrt(variance64 + 1e-3) * gamma64 + beta64
            wanted = [out64, *torch.autograd.grad(out64, [x64, gamma64, beta64], grad.double()),
                      0.5 * mean64.detach(), 0.5 + 0.5 * variance64.detach()]
            errors += bf16_errors(computed, wanted)
    finally:
        native._column_batch_norm = original
    assert len(used) == 2 and computed[0].dtype == torch.bfloat16 and max(errors) < 1e-2


def test_native_dropout(monkeypatch):
    """native.Dropout's NumPy-drawn mask: the rate, the scaling, the gradient,
    independence, seeding, and Keras's path where it does not apply."""
    keras_calls = []
    for module, attribute in ((torch, "bernoulli"), (torch.nn.functional, "dropout")):
        original = getattr(module, attribute)
        monkeypatch.setattr(module, attribute, lambda *args, _original=original, **kwargs:
                            keras_calls.append(1) or _original(*args, **kwargs))
    keras.utils.set_random_seed(0)
    layer = native.Dropout(0.2)
    x = torch.full((250, 4000), 3.0, requires_grad=True)
    y = layer(x, training=True)
    y.sum().backward()
    dropped = (y == 0).double()
    # A million units: the dropped fraction's standard error is 4e-4 at 0.2, 5e-4 at 0.5.
    assert abs(float(dropped.mean()) - 0.2) < 2e-3
    assert sorted(set(y[y != 0].tolist())) == [3.75]  # 3 / (1 - 0.2)
    assert torch.equal(x.grad * 3.0, y.detach())
    flat = dropped.flatten()
    assert abs(float(np.corrcoef(flat[:-1].numpy(), flat[1:].numpy())[0, 1])) < 5e-3
    assert abs(float((native.Dropout(0.5)(x, training=True) == 0).double().mean()) - 0.5) < 2.5e-3
    assert bool((layer(x, training=True) != y).any())  # the next call draws anew
    keras.utils.set_random_seed(0)
    assert torch.equal(native.Dropout(0.2)(x, training=True), y)  # the seed repeats
    assert keras_calls == []  # neither bernoulli nor F.dropout
    assert torch.equal(layer(x, training=False), x)
    small = native.Dropout(0.3, dtype="bfloat16")(torch.ones(3, 5), training=True)
    assert small.dtype == torch.bfloat16 and sorted(set(small.flatten().tolist())) == [0.0, 1.4296875]
    rows = native.Dropout(0.5, noise_shape=(250, 1))(torch.ones(250, 4000), training=True)
    assert bool(((rows == 0).all(1) | (rows != 0).all(1)).all()) and keras_calls  # Keras's own


PAPER_NETWORKS = [("mobilenetv2", {"expansion": 7}), ("resnet5m", {"row": 6}),
                  ("resnet5m", {"row": 1}), ("modified_resnet", {}), ("se_resnet", {}),
                  ("resnet20", {}), ("kth_resnet_b", {}), ("kth_resnet_c", {}),
                  ("kth_vgg3_bn_dropout", {}), ("kth_norm_cnn", {"norm": "group"})]


def both_ways(name, args, batch_norm_statistics_from_keras=False, monkeypatch=None):
    """(inference logits, training loss, the weights' change after one SGD step at
    0.1) with the fast path and without, from the same seed; dropout off (its masks
    are drawn differently on the two paths)."""
    from models import build_model

    images = np.random.default_rng(6).normal(size=(16, 32, 32, 3)).astype("float32")
    labels = np.eye(10, dtype="float32")[np.arange(16) % 10]
    if batch_norm_statistics_from_keras:
        monkeypatch.setattr(native.BatchNormalization, "call", keras.layers.BatchNormalization.call)
    results = []
    for use_native in (True, False):
        native.NATIVE_TORCH = use_native
        keras.utils.set_random_seed(0)
        model = build_model(name, 10, **args)
        for layer in model.layers:
            if isinstance(layer, keras.layers.Dropout):
                layer.rate = 0.0
        before = [keras.ops.convert_to_numpy(w).copy() for w in model.trainable_weights]
        logits = keras.ops.convert_to_numpy(model(images, training=False))
        model.compile(optimizer=keras.optimizers.SGD(0.1),
                      loss=keras.losses.CategoricalCrossentropy(from_logits=True))
        loss = float(model.train_on_batch(images, labels))
        step = np.concatenate([(keras.ops.convert_to_numpy(w) - b).ravel()
                               for w, b in zip(model.trainable_weights, before)])
        results.append((logits, loss, step))
    (logits, loss, step), (keras_logits, keras_loss, keras_step) = results
    return (float(np.abs(logits - keras_logits).max() / np.abs(keras_logits).max()),
            abs(loss - keras_loss) / abs(keras_loss),
            float(np.linalg.norm(step - keras_step) / np.linalg.norm(keras_step)))


@pytest.mark.parametrize("name, args", PAPER_NETWORKS)
def test_every_paper_network_both_ways(name, args, monkeypatch):
    """Built with the fast path and without: the same logits and training loss to
    1e-5, and, with BatchNorm's batch statistics computed alike, the same SGD step
    to 1e-5 (measured: at most 2e-7). The fast path's statistics are PyTorch's CPU
    kernel's (accumulated in float32: 4e-5 relative over 32,768 values a channel,
    where Keras's E[x^2] - E[x]^2 gets 1.7e-7 there but 3e-4 on offset data); a
    random network's backward amplifies that to step differences of up to 4%
    (kth_resnet_c), which test_batch_norm_statistics_against_float64 bounds."""
    logits, loss, _ = both_ways(name, args)
    assert logits < 1e-5 and loss < 1e-5
    assert both_ways(name, args, True, monkeypatch)[2] < 1e-5


def test_batch_norm_statistics_against_float64():
    """Each path's training BatchNorm (outputs and input gradient) against float64:
    post-ReLU activations over 32,768 values a channel, and offset data (mean 2,
    std 0.01) where E[x^2] - E[x]^2 cancels."""
    rng = np.random.default_rng(0)
    errors = {}
    for case, x in (("relu", np.maximum(rng.normal(size=(32, 32, 32, 32)), 0)),
                    ("offset", rng.normal(2.0, 0.01, size=(4, 4, 4, 8)))):
        x = x.astype("float32")
        upstream = rng.normal(size=x.shape)
        x64 = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        mean, variance = x64.mean((0, 1, 2)), x64.var((0, 1, 2), correction=0)
        y64 = (x64 - mean) / torch.sqrt(variance + 1e-3)
        (g64,) = torch.autograd.grad((y64 * torch.tensor(upstream)).sum(), [x64])
        for use_native in (True, False):
            native.NATIVE_TORCH = use_native
            images = torch.tensor(x, requires_grad=True)
            y = native.BatchNormalization()(images, training=True)
            (g,) = torch.autograd.grad((y * torch.tensor(upstream, dtype=torch.float32)).sum(),
                                       [images])
            errors[case, use_native] = max(
                float((y.double() - y64).abs().max() / y64.abs().max()),
                float((g.double() - g64).abs().max() / g64.abs().max()))
    assert errors["relu", True] < 2e-4 and errors["relu", False] < 1e-6
    assert errors["offset", True] < 2e-5 and errors["offset", False] < 2e-3


def test_saved_models_load_across_the_switch(tmp_path):
    """A model saved with the fast path loads and predicts the same without it, and
    the other way round."""
    from models import build_model

    images = np.random.default_rng(7).normal(size=(2, 32, 32, 3)).astype("float32")
    for saved_with in (True, False):
        native.NATIVE_TORCH = saved_with
        keras.utils.set_random_seed(0)
        model = build_model("resnet20", 10)
        expected = keras.ops.convert_to_numpy(model(images, training=False))
        path = str(tmp_path / f"model_{saved_with}.keras")
        model.save(path)
        native.NATIVE_TORCH = not saved_with
        loaded = keras.saving.load_model(path)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(images, training=False)),
                                   expected, rtol=1e-5, atol=1e-5)
