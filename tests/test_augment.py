"""Augmentation: each op against Pillow or its defining formula, and statistical
bounds on the random choices that a wrong implementation fails."""

import math

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from data import autoaugment, image_ops
from data.augment import Augmenter, random_crop, random_translate
from data.mixing import Mixer
from data.pipeline import CifarBatches


@pytest.fixture(scope="module")
def images():
    """Random images, some of low contrast and some with few levels, so the
    histogram ops meet their special cases."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (48, 32, 32, 3), dtype=np.uint8)
    x[:12] = (x[:12] // 4 + 100).astype(np.uint8)
    x[12:16] = rng.integers(0, 3, (4, 32, 32, 3)) * 80
    x[16] = 7
    return x


def pillow(images, function, parameters=None):
    parameters = [None] * len(images) if parameters is None else parameters
    return np.stack([
        np.asarray(function(Image.fromarray(image), value) if value is not None
                   else function(Image.fromarray(image)))
        for image, value in zip(images, parameters)
    ])


def assert_within_one_level(ours, reference):
    difference = np.abs(ours.astype(int) - reference.astype(int))
    assert difference.max() <= 1, f"max difference {difference.max()}"


@pytest.mark.parametrize("name, ours, enhancer", [
    ("brightness", image_ops.brightness, ImageEnhance.Brightness),
    ("color", image_ops.color, ImageEnhance.Color),
    ("contrast", image_ops.contrast, ImageEnhance.Contrast),
    ("sharpness", image_ops.sharpness, ImageEnhance.Sharpness),
])
def test_enhance_ops_match_pillow(images, name, ours, enhancer):
    factors = np.random.default_rng(1).uniform(0.0, 2.0, len(images))  # AutoAugment: 0.1-1.9
    reference = pillow(images, lambda image, f: enhancer(image).enhance(f), factors)
    assert_within_one_level(ours(images, factors), reference)


@pytest.mark.parametrize("name, ours, reference", [
    ("autocontrast", image_ops.autocontrast, ImageOps.autocontrast),
    ("equalize", image_ops.equalize, ImageOps.equalize),
    ("invert", image_ops.invert, ImageOps.invert),
    ("grayscale", image_ops.grayscale, lambda image: image.convert("L").convert("RGB")),
])
def test_histogram_and_point_ops_match_pillow(images, name, ours, reference):
    assert_within_one_level(ours(images), pillow(images, reference))


@pytest.mark.parametrize("bits", [4, 5, 6, 7, 8])
def test_posterize_matches_pillow(images, bits):
    ours = image_ops.posterize(images, np.full(len(images), bits))
    assert_within_one_level(ours, pillow(images, lambda image: ImageOps.posterize(image, bits)))


@pytest.mark.parametrize("threshold", autoaugment.MAGNITUDES["Solarize"][0].tolist())
def test_solarize_matches_pillow_at_every_bin(images, threshold):
    ours = image_ops.solarize(images, threshold)
    assert_within_one_level(ours, pillow(images, lambda image: ImageOps.solarize(image, threshold)))


def test_hue_matches_torchvision_on_pil(images):
    """torchvision's adjust_hue for PIL: H + int(factor * 255) modulo 256 in Pillow's HSV."""
    factors = np.random.default_rng(2).uniform(-0.5, 0.5, len(images))

    def reference(image, factor):
        hue, saturation, value = image.convert("HSV").split()
        shifted = (np.asarray(hue, dtype=np.int64) + int(factor * 255)) % 256
        merged = Image.merge("HSV", (Image.fromarray(shifted.astype(np.uint8), "L"), saturation, value))
        return merged.convert("RGB")

    assert_within_one_level(image_ops.adjust_hue(images, factors), pillow(images, reference, factors))


def test_affine_ops_match_pillow_by_their_matrices(images):
    rng = np.random.default_rng(3)
    angles = rng.uniform(-30, 30, len(images))
    rotated = pillow(images, lambda image, a: image.rotate(a, resample=Image.NEAREST), angles)
    assert np.array_equal(image_ops.affine_nearest(images, image_ops.rotation_matrices(angles, 32, 32)),
                          rotated)
    factors = rng.uniform(-0.3, 0.3, len(images))
    for axis in "xy":
        matrices = image_ops.shear_matrices(factors, axis)
        reference = pillow(images, lambda image, m: image.transform(
            (32, 32), Image.AFFINE, tuple(m), Image.NEAREST), matrices)
        assert np.array_equal(image_ops.affine_nearest(images, matrices), reference)
    # ShearX by f reads the input at x + f * y (torchvision's shear about the corner).
    sheared = image_ops.affine_nearest(images[:1], image_ops.shear_matrices(np.array([0.25]), "x"))
    assert np.array_equal(sheared[0, 8, :24], images[0, 8, 2:26])


def test_translation_is_an_exact_whole_pixel_shift(images):
    moved = image_ops.affine_nearest(images[:2], image_ops.translation_matrices([3, -2], [-1, 4]))
    assert np.array_equal(moved[0, :31, 3:], images[0, 1:, :29])
    assert (moved[0, :, :3] == 0).all() and (moved[0, 31] == 0).all()
    assert np.array_equal(moved[1, 4:, :30], images[1, :28, 2:])


def test_random_translate_draws_rounded_offsets_up_to_the_fraction():
    """RandomAffine(translate=0.1) on 32 px: round(U(-3.2, 3.2)), so |shift| <= 3 and
    P(3) = 0.7 / 6.4 per side. A marker pixel shows each image's shift."""
    x = np.zeros((20000, 32, 32, 3), np.uint8)
    x[:, 16, 16] = 255
    moved = random_translate(x, np.random.default_rng(4), fraction=0.1)
    rows, cols = np.nonzero(moved[..., 0] == 255)[1:]
    dx = cols - 16
    assert len(dx) == len(x) and np.abs(dx).max() == 3 and np.abs(rows - 16).max() == 3
    share_three = np.mean(dx == 3)
    assert abs(share_three - 0.7 / 6.4) < 4 * math.sqrt(0.11 * 0.89 / len(x))


def test_crop_offsets_are_uniform_and_the_crop_a_pure_translation():
    count = 16200
    x = np.arange(32 * 32, dtype=np.int32).reshape(1, 32, 32, 1).repeat(count, axis=0) + 1
    cropped = random_crop(x, np.random.default_rng(5), padding=4)
    padded = np.pad(x[0], ((4, 4), (4, 4), (0, 0)))
    for image in cropped[:300]:  # each crop is the padded image at exactly one offset
        matches = [(t, l) for t in range(9) for l in range(9)
                   if np.array_equal(padded[t:t + 32, l:l + 32], image)]
        assert len(matches) == 1
    # Pixel (0, 0) (value 1) sits at (4 - top, 4 - left) of a crop at offset (top, left).
    located = [tuple(4 - np.argwhere(image[..., 0] == 1)[0]) for image in cropped
               if (image[..., 0] == 1).any()]
    # Pixel (0, 0) is visible for offsets with top, left <= 4: 25 of the 81 positions.
    assert abs(len(located) / count - 25 / 81) < 0.02
    counts = np.zeros((9, 9))
    for top, left in located:
        counts[top, left] += 1
    observed = counts[:5, :5].ravel()
    expected = len(located) / 25
    chi_square = ((observed - expected) ** 2 / expected).sum()
    assert chi_square < 52.6  # 24 degrees of freedom, p = 0.001


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_flip_rate_matches_p(p):
    x = np.random.default_rng(6).integers(0, 256, (20000, 4, 4, 3), dtype=np.uint8)
    flipped = Augmenter([{"op": "hflip", "p": p}])(x, np.random.default_rng(7))
    changed = np.array([not np.array_equal(a, b) for a, b in zip(x, flipped)])
    assert np.array_equal(flipped[changed], x[changed][:, :, ::-1])
    assert abs(changed.mean() - p) < 4 * math.sqrt(p * (1 - p) / len(x))


def test_autoaugment_picks_sub_policies_uniformly_and_ops_with_their_probability():
    count = 50000
    policy, runs, magnitude = autoaugment.draw(count, np.random.default_rng(8))
    observed = np.bincount(policy, minlength=25)
    expected = count / 25
    assert ((observed - expected) ** 2 / expected).sum() < 51.2  # 24 dof, p = 0.001
    chosen = policy == 1  # Rotate (0.7, bin 2) then TranslateX (0.3, bin 9)
    assert abs(runs[chosen, 0].mean() - 0.7) < 0.03 and abs(runs[chosen, 1].mean() - 0.3) < 0.03
    assert set(np.round(np.abs(magnitude[chosen, 0]), 6)) == {round(30 * 2 / 9, 6)}
    assert abs(np.mean(magnitude[chosen, 0] < 0) - 0.5) < 0.03  # signed ops: random sign
    assert np.trunc(autoaugment.MAGNITUDES["TranslateX"][0]).tolist() == [0, 1, 3, 4, 6, 8, 9, 11, 12, 14]
    assert autoaugment.MAGNITUDES["Posterize"][0].tolist() == [8, 8, 7, 7, 6, 6, 5, 5, 4, 4]


def test_autoaugment_applies_the_drawn_ops(images):
    """Replaying the draw with Pillow op by op gives the same images."""
    x = np.repeat(images[:16], 8, axis=0)
    ours = autoaugment.apply_policy(x, np.random.default_rng(9))
    policy, runs, magnitude = autoaugment.draw(len(x), np.random.default_rng(9))
    enhancers = {"Brightness": ImageEnhance.Brightness, "Color": ImageEnhance.Color,
                 "Contrast": ImageEnhance.Contrast, "Sharpness": ImageEnhance.Sharpness}
    for index in range(len(x)):
        image = Image.fromarray(x[index])
        for slot in (0, 1):
            name = autoaugment.CIFAR10_POLICY[policy[index]][slot][0]
            if not runs[index, slot]:
                continue
            m = magnitude[index, slot]
            if name in enhancers:
                image = enhancers[name](image).enhance(1.0 + m)
            elif name == "Rotate":
                image = image.rotate(m, resample=Image.NEAREST)
            elif name in ("TranslateX", "TranslateY", "ShearX", "ShearY"):
                shift = int(m)
                matrix = {"TranslateX": (1, 0, -shift, 0, 1, 0), "TranslateY": (1, 0, 0, 0, 1, -shift),
                          "ShearX": (1, m, 0, 0, 1, 0), "ShearY": (1, 0, 0, m, 1, 0)}[name]
                image = image.transform((32, 32), Image.AFFINE, matrix, Image.NEAREST)
            elif name == "Posterize":
                image = ImageOps.posterize(image, int(m))
            elif name == "Solarize":
                image = ImageOps.solarize(image, m)
            else:
                image = {"AutoContrast": ImageOps.autocontrast, "Equalize": ImageOps.equalize,
                         "Invert": ImageOps.invert}[name](image)
        assert_within_one_level(ours[index], np.asarray(image))


def test_float_ops_follow_torchvision_tensor_formulas():
    rng = np.random.default_rng(10)
    x = rng.uniform(30, 200, (64, 8, 8, 3)).astype(np.float32)
    grey = Augmenter([{"op": "grayscale", "p": 1.0}])(x, rng)
    expected = 0.2989 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    np.testing.assert_allclose(grey[..., 1], expected, rtol=1e-6)
    stretched = Augmenter([{"op": "autocontrast", "p": 1.0}])(x, rng)
    np.testing.assert_allclose(stretched.min(axis=(1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(stretched.max(axis=(1, 2)), 255.0, rtol=1e-6)


def test_color_jitter_factors_stay_in_range_and_order_varies():
    x = np.full((4000, 4, 4, 3), 100, np.uint8)
    out = Augmenter([{"op": "color_jitter", "brightness": 0.3}])(x, np.random.default_rng(11))
    levels = out[:, 0, 0, 0].astype(int)
    assert levels.min() >= 70 and levels.max() <= 130
    assert abs(levels.mean() - 100) < 1.5


def test_bad_augment_specs_are_rejected_with_the_reason():
    with pytest.raises(ValueError, match="takes"):
        Augmenter([{"op": "crop", "pad": 4}])
    with pytest.raises(ValueError, match="before 'float'"):
        Augmenter([{"op": "float"}, {"op": "autoaugment"}])
    with pytest.raises(ValueError, match=r"p must lie in \[0, 1\]"):
        Augmenter([{"op": "hflip", "p": 1.5}])


def test_evaluation_batches_are_never_augmented():
    rng = np.random.default_rng(12)
    x = rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 32)
    batches = CifarBatches(x, y, 10, 16)
    first, labels = batches[0]
    assert np.array_equal(first, x[:16].astype(np.float32))
    assert np.array_equal(labels.argmax(-1), y[:16])


def test_threaded_batches_are_the_one_thread_batches():
    rng = np.random.default_rng(13)
    x = rng.integers(0, 256, (80, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 80)
    spec = dict(augment=Augmenter([{"op": "crop", "padding": 4}, {"op": "hflip", "p": 0.5},
                                   {"op": "rotate", "degrees": 15}]),
                mix=Mixer(alpha=1.0), shuffle=True, seed=5)
    inline = CifarBatches(x, y, 10, 8, **spec)
    threaded = CifarBatches(x, y, 10, 8, threads=3, **spec)
    # As Keras asks: one batch to build the model before the first epoch's callbacks,
    # then a resumed run's epochs from 4, one of them cut short, and a repeat.
    visits = [(0, [0])] + [(4, range(10)), (5, [0, 1, 2]), (6, range(10)), (6, [3, 3, 9])]
    for epoch, indices in visits:
        inline.set_epoch(epoch)
        threaded.set_epoch(epoch)
        for index in indices:
            for a, b in zip(inline[index], threaded[index]):
                np.testing.assert_array_equal(a, b)
    assert threaded._pool is not None and inline._pool is None
    threaded.close()
    assert threaded._pool is None and not threaded._pending
    with pytest.raises(ValueError, match="threads must be at least 1; got 0"):
        CifarBatches(x, y, 10, 8, threads=0)


def beta_cdf(values, alpha):
    """Regularised incomplete beta I_x(a, a), by numeric integration of the density."""
    grid = np.linspace(0, 1, 20001)[1:-1]
    density = grid ** (alpha - 1) * (1 - grid) ** (alpha - 1)
    cumulative = np.concatenate([[0], np.cumsum(density)])
    cumulative /= cumulative[-1]
    return np.interp(values, np.concatenate([[0], grid]), cumulative)


@pytest.mark.parametrize("alpha", [0.4, 1.0])
def test_mixup_lambda_is_beta_and_labels_mix_like_pixels(alpha):
    mixer = Mixer(kind="mixup", alpha=alpha, p=1.0, gate="batch")
    rng = np.random.default_rng(13)
    x = rng.normal(size=(8, 2, 2, 3)).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 8)]
    lambdas = []
    for index in range(3000):
        mixed, labels = mixer(x, y, 0, 0, index)
        # Recover (lam, partner) from the labels' weights; pixels must mix the same way.
        draw = np.random.default_rng([0, 0, 3, index])
        draw.random()
        lam = draw.beta(alpha, alpha)
        partner = draw.permutation(8)
        np.testing.assert_allclose(mixed, lam * x + (1 - lam) * x[partner], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(labels, lam * y + (1 - lam) * y[partner], rtol=1e-5, atol=1e-6)
        lambdas.append(lam)
    lambdas = np.sort(lambdas)
    empirical = np.arange(1, len(lambdas) + 1) / len(lambdas)
    statistic = np.max(np.abs(empirical - beta_cdf(lambdas, alpha)))
    assert statistic < 1.63 / math.sqrt(len(lambdas))  # Kolmogorov-Smirnov, p = 0.01


def test_mixup_epoch_gate_opens_with_probability_p_and_stops():
    mixer = Mixer(kind="mixup", alpha=1.0, p=0.9, gate="epoch", stop_epoch=400)
    opened = np.array([mixer.epoch_is_mixed(0, epoch) for epoch in range(400)])
    # Binomial(400, 0.9): mean 360, sd 6; p = 0.8 would give about 320.
    assert abs(opened.sum() - 360) < 4 * 6
    assert not any(mixer.epoch_is_mixed(0, epoch) for epoch in range(400, 415))
    x = np.ones((4, 2, 2, 3), np.float32)
    y = np.eye(10, dtype=np.float32)[[0, 1, 2, 3]]
    closed = int(np.flatnonzero(~opened)[0])
    assert np.array_equal(mixer(x, y, 0, closed, 0)[1], y)


def test_cutmix_labels_follow_the_pasted_area():
    mixer = Mixer(kind="cutmix", alpha=1.0)
    x = np.stack([np.full((32, 32, 3), i, np.float32) for i in range(4)])
    y = np.eye(4, dtype=np.float32)
    for index in range(50):
        mixed, labels = mixer(x, y, 1, 0, index)
        for image, label in zip(mixed, labels):
            shares = np.array([(image[..., 0] == k).mean() for k in range(4)])
            np.testing.assert_allclose(shares, label, atol=1e-6)


def test_augment_benchmark_writes_json_and_table(tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "augment.json"
    script = __file__.replace("tests/test_augment.py", "benchmarks/augment.py")
    result = subprocess.run([sys.executable, script, "--no-fit", "--seconds", "0.05",
                             "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    chains = json.loads(out.read_text())["chains"]
    assert {c["experiment"] for c in chains} >= {"mobilenetv2", "resnet5m_row6", "modified_resnet",
                                                 "se_resnet_mixup"}
    assert all(c["images_per_second"] > 0 for c in chains)
    assert "| chain |" in (tmp_path / "augment.md").read_text()


def notebook_cutout(image, top, left, size=16):
    """ResNet_Jan.ipynb's CustomImageDataGenerator._cutout, given its draws of
    np.random.randint(-size // 2, h - size) for top and left."""
    image = np.copy(image)
    mask_value = image.mean()
    bottom, right = top + size, left + size
    if top < 0:
        top = 0
    if left < 0:
        left = 0
    image[top:bottom, left:right, :].fill(mask_value)
    return image


class _Draws:
    """An rng whose integers() hands out given top and left draws."""

    def __init__(self, *draws):
        self.draws = list(draws)

    def integers(self, low, high, size):
        values = np.asarray(self.draws.pop(0))
        assert values.shape == (size,) and values.min() >= low and values.max() < high
        return values


def test_cutout_cuts_as_the_notebook_for_every_draw():
    """Every (top, left) pair randint(-8, 16) can draw, on standardised float images
    as the notebook's: the same pixels filled with the same value. The always-16
    variant moves an edge square inside instead."""
    from data.augment import cutout

    tops, lefts = np.meshgrid(np.arange(-8, 16), np.arange(-8, 16), indexing="ij")
    tops, lefts = tops.ravel(), lefts.ravel()
    x = np.random.default_rng(5).normal(size=(len(tops), 32, 32, 3)).astype(np.float32)
    ours = cutout(x, _Draws(tops, lefts))
    expected = np.stack([notebook_cutout(image, t, l) for image, t, l in zip(x, tops, lefts)])
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)
    full = cutout(x, _Draws(tops, lefts), shrink_at_edge=False)
    cut = (full != x).all(-1).reshape(len(x), -1).sum(1)
    assert set(cut.tolist()) == {256}  # 16 x 16 wherever the draw fell


def test_cutout_square_sizes_follow_the_notebook():
    """The side of the square, drawn as the augmenter draws it, against the
    notebook's routine driven by np.random: 8-15 rows with probability 1/24 each
    and 16 otherwise (mean 14.5), by a chi-square test; the fixed variant is 16."""
    from data.augment import cutout

    count = 24000
    x = np.zeros((count, 32, 32, 1), np.float32)
    x[:, :, :, 0] = np.arange(32 * 32).reshape(32, 32)  # mean 511.5: every cut pixel changes
    ours = cutout(x, np.random.default_rng(6))
    np.random.seed(7)
    notebook = np.stack([notebook_cutout(image, np.random.randint(-8, 16), np.random.randint(-8, 16))
                         for image in x[:2400]])

    def sides(batch):
        return (batch != x[:len(batch)]).any(2)[..., 0].sum(1)  # rows touched

    observed = np.bincount(sides(ours), minlength=17)[8:]
    reference = np.bincount(sides(notebook), minlength=17)[8:] / 2400
    expected = np.array([1] * 8 + [16]) / 24
    chi2 = ((observed - count * expected) ** 2 / (count * expected)).sum()
    assert chi2 < 26.1, (observed, chi2)  # 8 degrees of freedom, p = 0.001
    np.testing.assert_allclose(reference, expected, atol=0.03)
    assert sides(ours).mean() == pytest.approx(14.5, abs=0.05)
    fixed = cutout(x[:500], np.random.default_rng(6), shrink_at_edge=False)
    assert set(sides(fixed).tolist()) == {16}


def test_mixup_accuracy_counts_each_images_own_label():
    """Paper 003's trainer counted `predicted == labels`, each image's own label,
    whichever image dominated the mix; the loss stays cross-entropy against the
    mixed labels. A network that names every image's own class scores 1 though
    the dominant (argmax) label is the partner's wherever lam < 0.5."""
    import keras

    from training.losses import OwnLabelCrossentropy, own_label_accuracy

    rng = np.random.default_rng(14)
    x = rng.integers(0, 256, (640, 4, 4, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 640)
    mixer = Mixer(kind="mixup", alpha=1.0, p=1.0, gate="batch")
    batches = CifarBatches(x, y, 10, 64, mix=mixer, shuffle=True, label_column=True)
    def lam(index):  # the mixer's draws for a batch: its gate, then lambda
        draw = np.random.default_rng([0, 0, 3, index])
        draw.random()
        return draw.beta(1.0, 1.0)

    index = next(i for i in range(10) if lam(i) < 0.4)
    batches.set_epoch(0)
    images, labels = batches.batch(0, index)
    assert labels.shape == (64, 11)
    own = y[batches.order(0)[index * 64:(index + 1) * 64]]
    np.testing.assert_array_equal(labels[:, -1], own)
    logits = np.eye(10, dtype=np.float32)[own] * 5
    accuracy = keras.ops.convert_to_numpy(own_label_accuracy(labels, logits))
    dominant = (labels[:, :-1].argmax(-1) == own).mean()
    assert accuracy.mean() == 1.0 and dominant < 0.9
    loss = keras.ops.convert_to_numpy(OwnLabelCrossentropy()(labels, logits))
    expected = keras.ops.convert_to_numpy(keras.losses.CategoricalCrossentropy(from_logits=True)(
        labels[:, :-1], logits))
    assert loss == pytest.approx(expected, rel=1e-6)
