"""Models: published parameter counts, the v1.5 stride, in-model normalization."""

import keras
import numpy as np
import pytest

from tf_lars import models


def trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_resnet50_v1_5_has_the_published_parameter_count():
    model = models.build("resnet50")
    # torchvision's and Flax's ResNet-50: 25,557,032 parameters ("25.6M").
    assert trainable(model) == 25_557_032
    # v1.5: a downsampling block strides in its 3x3 convolution, not its 1x1.
    assert model.get_layer("stage2_block1_2_conv").strides == (2, 2)
    assert model.get_layer("stage2_block1_1_conv").strides == (1, 1)
    assert model.output.shape == (None, 1000)


def test_zero_init_residual_zeroes_each_blocks_last_gamma():
    model = models.build("resnet50", zero_init_residual=True)
    last = [layer for layer in model.layers if layer.name.endswith("_3_bn")]
    assert len(last) == 16
    assert all(not np.any(keras.ops.convert_to_numpy(layer.gamma)) for layer in last)
    assert np.all(keras.ops.convert_to_numpy(model.get_layer("stage1_block1_1_bn").gamma) == 1)


def test_alexnet_bn_parameter_count_by_hand():
    convs = [(11, 3, 96), (5, 96, 256), (3, 256, 384), (3, 384, 384), (3, 384, 256)]
    conv_weights = sum(k * k * cin * cout for k, cin, cout in convs)  # no biases
    batch_norm = sum(2 * cout for _, _, cout in convs)  # gamma and beta
    dense = (6 * 6 * 256 + 1) * 4096 + (4096 + 1) * 4096 + (4096 + 1) * 1000
    assert trainable(models.build("alexnet_bn")) == conv_weights + batch_norm + dense
    # Published ungrouped AlexNet (with conv biases, no BatchNorm): 62,378,344.
    assert conv_weights + sum(c for _, _, c in convs) + dense == 62_378_344


def test_resnet20_matches_he_et_al():
    model = models.build("resnet20", num_classes=10, image_size=32)
    # He et al. 2016, Table 6: ResNet-20 has 0.27M parameters.
    assert 265_000 <= trainable(model) <= 275_000
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) + 1 == 20  # 19 convolutions and the classifier


def test_small_resnet_rejects_bad_depth():
    with pytest.raises(ValueError, match="depth=21"):
        models.small_resnet(depth=21)


def test_uint8_input_is_normalized_inside_the_model():
    mean, std = (120.0, 110.0, 100.0), (60.0, 50.0, 40.0)
    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3)).astype(np.uint8)
    model = models.build("resnet20", image_size=32, input_dtype="uint8", mean=mean, std=std)
    assert model.input.dtype == "uint8"
    first = keras.Model(model.input, model.get_layer("normalize").output)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(first(pixels)),
        (pixels - np.array(mean)) / np.array(std),
        rtol=1e-5,
        atol=1e-5,
    )
    # Float input is taken as normalized already: no normalization layer.
    assert "normalize" not in [layer.name for layer in models.build("resnet20").layers]
    # One mean for all channels is repeated; three for one channel is an error.
    gray = models.build(
        "resnet8", image_size=8, channels=3, input_dtype="uint8", mean=(100.0,), std=(50.0,)
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(gray.get_layer("normalize").mean).ravel(), [100.0] * 3
    )
    with pytest.raises(ValueError, match=r"mean \(1.0, 2.0, 3.0\) has 3 values for 1 channels"):
        models.build(
            "resnet8",
            image_size=8,
            channels=1,
            input_dtype="uint8",
            mean=(1.0, 2.0, 3.0),
            std=(1.0,),
        )


def test_each_layer_draws_its_own_weights_and_a_seed_repeats_them_across_processes():
    import hashlib
    import subprocess
    import sys

    keras.utils.set_random_seed(4)
    model = models.build("resnet8", image_size=8, channels=1)
    first = model.get_layer("stage1_block1_1_conv").kernel
    second = model.get_layer("stage1_block1_2_conv").kernel  # same shape
    assert first.shape == second.shape
    assert not np.allclose(keras.ops.convert_to_numpy(first), keras.ops.convert_to_numpy(second))
    # A fresh process with the same seed builds the same weights.
    script = (
        "import hashlib, keras, numpy as np; from tf_lars import models; "
        "keras.utils.set_random_seed(4); "
        "m = models.build('resnet8', image_size=8, channels=1); "
        "print(hashlib.md5(b''.join(np.asarray(w).tobytes() "
        "for w in m.get_weights())).hexdigest())"
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        ).stdout.split()[-1]
        for _ in range(2)
    ]
    here = hashlib.md5(b"".join(np.asarray(w).tobytes() for w in model.get_weights()))
    assert runs[0] == runs[1] == here.hexdigest()


def test_unknown_model_is_named():
    with pytest.raises(ValueError, match="Unknown model 'vgg'"):
        models.build("vgg")


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_one_pass_batch_norm_matches_keras(policy):
    from tf_lars.models.layers import BatchNormalization

    keras.config.set_dtype_policy(policy)
    rng = np.random.default_rng(0)
    # Activations with an offset, as after a convolution: mean 3, std 1.5.
    x = (3.0 + 1.5 * rng.normal(size=(8, 6, 6, 5))).astype(np.float32)
    ours = BatchNormalization(momentum=0.9, epsilon=1e-5)
    theirs = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
    gamma = rng.uniform(0.5, 1.5, size=5).astype(np.float32)
    for layer in (ours, theirs):
        layer.build(x.shape)
        layer.gamma.assign(gamma)
    outputs = [
        keras.ops.convert_to_numpy(keras.ops.cast(layer(x, training=True), "float32"))
        for layer in (ours, theirs)
    ]
    tolerance = 1e-4 if policy == "float32" else 2e-2
    np.testing.assert_allclose(outputs[0], outputs[1], atol=tolerance)
    for name in ("moving_mean", "moving_variance"):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(getattr(ours, name)),
            keras.ops.convert_to_numpy(getattr(theirs, name)),
            rtol=1e-5,
        )
    # And against numpy: (x - mean) / sqrt(var + eps) * gamma over N, H, W.
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    np.testing.assert_allclose(
        outputs[0], (x - mean) / np.sqrt(var + 1e-5) * gamma, atol=tolerance
    )
