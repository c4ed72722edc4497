"""AlexNet-BN: the AlexNet of "ImageNet Training in Minutes" (You et al.).

Krizhevsky et al.'s five convolutions and three dense layers (96-256-384-
384-256, 4096-4096, ungrouped), with BatchNorm after each convolution and no
local response normalization, which is what let LARS train it at batch 32K.
"""

from collections.abc import Sequence
from typing import Any

import keras

from tf_lars.models import layers as L


def alexnet_bn(
    num_classes: int = 1000,
    image_size: int = 224,
    channels: int = 3,
    input_dtype: str = "float32",
    dropout: float = 0.5,
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
) -> Any:
    """AlexNet with BatchNormalization after each convolution (AlexNet-BN, as
    You et al. train it at batch 32K), for 224 px images.

    Args:
        num_classes: classes of the output logits.
        image_size: height and width of the input images.
        channels: channels of the input images.
        input_dtype: the input's dtype ("uint8" images are normalized inside
            the model by `mean` and `std`).
        dropout: the dropout rate after fc6 and fc7. Defaults to 0.5.
        mean, std: per-channel (or one) values that normalize the input.
    """
    inputs, x = L.image_input(image_size, channels, input_dtype, mean, std)
    x = L.conv_bn_relu(x, 96, 11, 4, name="conv1")
    x = keras.layers.MaxPooling2D(3, 2, name="pool1")(x)
    x = L.conv_bn_relu(x, 256, 5, name="conv2")
    x = keras.layers.MaxPooling2D(3, 2, name="pool2")(x)
    x = L.conv_bn_relu(x, 384, 3, name="conv3")
    x = L.conv_bn_relu(x, 384, 3, name="conv4")
    x = L.conv_bn_relu(x, 256, 3, name="conv5")
    x = keras.layers.MaxPooling2D(3, 2, name="pool5")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    for i in (6, 7):
        x = keras.layers.Dense(4096, activation="relu", name=f"fc{i}")(x)
        x = keras.layers.Dropout(dropout, name=f"drop{i}")(x)
    return keras.Model(inputs, L.classifier(x, num_classes, name="fc8"), name="alexnet_bn")
