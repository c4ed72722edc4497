"""ResNets: ResNet-50 v1.5 for ImageNet and ResNet-(6n+2) for small images.

ResNet-50 v1.5 (He et al., arXiv:1512.03385, with the stride on the 3x3
convolution of each downsampling bottleneck, as the reference TPU/Model
Garden pipelines and MLPerf use): 25,557,032 parameters with 1000 classes.
`zero_init_residual` starts each block's last BatchNorm gamma at 0 (Goyal et
al., arXiv:1706.02677), so every residual block begins as the identity.

The small ResNet is He et al.'s CIFAR family (section 4.2): a 3x3 stem,
three stages of n basic blocks (16, 32, 64 channels times `width`), and
parameter-free shortcuts (option A: strided identity, zero-padded channels);
ResNet-20 (n = 3) has 0.27M parameters.
"""

from collections.abc import Sequence
from typing import Any, Optional

import keras
from keras import ops

from tf_lars.models import layers as L

RESNET50_STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))


def bottleneck(x: Any, filters: int, strides: int, zero_init_residual: bool, name: str) -> Any:
    shortcut = x
    if strides != 1 or x.shape[-1] != 4 * filters:
        shortcut = L.conv(4 * filters, 1, strides, name=f"{name}_proj_conv")(x)
        shortcut = L.batch_norm(name=f"{name}_proj_bn")(shortcut)
    x = L.conv_bn_relu(x, filters, 1, name=f"{name}_1")
    x = L.conv_bn_relu(x, filters, 3, strides, name=f"{name}_2")  # v1.5: stride here
    x = L.conv(4 * filters, 1, name=f"{name}_3_conv")(x)
    x = L.batch_norm(name=f"{name}_3_bn", zero_gamma=zero_init_residual)(x)
    return keras.layers.ReLU(name=f"{name}_out")(
        keras.layers.Add(name=f"{name}_add")([x, shortcut])
    )


def resnet50(
    num_classes: int = 1000,
    image_size: int = 224,
    channels: int = 3,
    input_dtype: str = "float32",
    zero_init_residual: bool = True,
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
) -> Any:
    """ResNet-50 v1.5 (the stride on the 3x3 convolution of each bottleneck).

    Args:
        num_classes: classes of the output logits.
        image_size: height and width of the input images.
        channels: channels of the input images.
        input_dtype: the input's dtype ("uint8" images are normalized inside
            the model by `mean` and `std`).
        zero_init_residual: start each block's last BatchNorm gamma at 0 (Goyal
            et al.). Defaults to True.
        mean, std: per-channel (or one) values that normalize the input.
    """
    inputs, x = L.image_input(image_size, channels, input_dtype, mean, std)
    x = L.conv_bn_relu(x, 64, 7, 2, name="stem")
    x = keras.layers.MaxPooling2D(3, 2, padding="same", name="stem_pool")(x)
    for stage, (filters, blocks) in enumerate(RESNET50_STAGES):
        for block in range(blocks):
            strides = 2 if block == 0 and stage > 0 else 1
            x = bottleneck(
                x, filters, strides, zero_init_residual, name=f"stage{stage + 1}_block{block + 1}"
            )
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, L.classifier(x, num_classes), name="resnet50_v1_5")


@keras.saving.register_keras_serializable(package="tf_lars")
class PadShortcut(keras.layers.Layer):
    """Option-A shortcut: take every `stride`-th pixel, zero-pad channels."""

    def __init__(self, stride: int, extra_channels: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stride, self.extra_channels = stride, extra_channels

    def call(self, x: Any) -> Any:
        x = x[:, :: self.stride, :: self.stride, :]
        half = self.extra_channels // 2
        return ops.pad(x, [[0, 0], [0, 0], [0, 0], [half, self.extra_channels - half]])

    def compute_output_shape(self, shape: Any) -> Any:
        def down(n: Optional[int]) -> Optional[int]:
            return None if n is None else -(-n // self.stride)

        return (shape[0], down(shape[1]), down(shape[2]), shape[3] + self.extra_channels)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "stride": self.stride,
            "extra_channels": self.extra_channels,
        }


def basic_block(x: Any, filters: int, strides: int, zero_init_residual: bool, name: str) -> Any:
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = PadShortcut(strides, filters - x.shape[-1], name=f"{name}_shortcut")(x)
    x = L.conv_bn_relu(x, filters, 3, strides, name=f"{name}_1")
    x = L.conv(filters, 3, name=f"{name}_2_conv")(x)
    x = L.batch_norm(name=f"{name}_2_bn", zero_gamma=zero_init_residual)(x)
    return keras.layers.ReLU(name=f"{name}_out")(
        keras.layers.Add(name=f"{name}_add")([x, shortcut])
    )


def small_resnet(
    depth: int = 20,
    num_classes: int = 10,
    image_size: int = 32,
    channels: int = 3,
    width: int = 1,
    input_dtype: str = "float32",
    zero_init_residual: bool = False,
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
) -> Any:
    """He et al.'s CIFAR ResNet-`depth` (depth = 6n + 2), for 28-32 px images.

    Args:
        depth: 6n + 2 layers (8, 20, 32, 44, 56, 110).
        num_classes: classes of the output logits.
        image_size: height and width of the input images.
        channels: channels of the input images.
        input_dtype: the input's dtype ("uint8" images are normalized inside
            the model by `mean` and `std`).
        width: multiplies every layer's filters (16, 32, 64). Defaults to 1.
        zero_init_residual: start each block's last BatchNorm gamma at 0.
            Defaults to False.
        mean, std: per-channel (or one) values that normalize the input.
    """
    if (depth - 2) % 6:
        raise ValueError(f"depth must be 6n + 2 (20, 32, 44, 56, 110). Received: depth={depth}")
    blocks = (depth - 2) // 6
    inputs, x = L.image_input(image_size, channels, input_dtype, mean, std)
    x = L.conv_bn_relu(x, 16 * width, 3, name="stem")
    for stage in range(3):
        for block in range(blocks):
            strides = 2 if block == 0 and stage > 0 else 1
            x = basic_block(
                x,
                16 * width * 2**stage,
                strides,
                zero_init_residual,
                name=f"stage{stage + 1}_block{block + 1}",
            )
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, L.classifier(x, num_classes), name=f"resnet{depth}")
