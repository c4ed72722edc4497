"""The preprocessing presets' numbers, apart from the TensorFlow code that
uses them (`preprocessing.py`), so that code without TensorFlow (the
trainer's JAX engine on synthetic or in-memory data) can read them."""

import dataclasses

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
LEGACY_MEAN = (123.68, 116.78, 103.94)


def per_channel(values, channels, what="mean"):
    """`values` (one, or one per channel) as a list of `channels` values."""
    values = list(values)
    if len(values) not in (1, channels):
        raise ValueError(
            f"{what} {tuple(values)} has {len(values)} values for {channels} "
            "channels: give one value, or one per channel"
        )
    return values * (channels // len(values))


@dataclasses.dataclass(frozen=True)
class Preset:
    """Every number of a preprocessing recipe.

    Attributes:
        min_object_covered, aspect_ratio_range, area_range, max_attempts: the
            training crop's draw (`tf.image.sample_distorted_bounding_box`'s).
        use_boxes: the record's boxes guide the crop (else the whole image).
        fallback_center_crop: when every attempt fails, a centre crop (TPU
            reference) rather than the whole image.
        resize_method: the crop's resize ("bicubic", "bilinear").
        eval_crop_padding: evaluation's centre crop is size/(size+padding) of
            the short side...
        eval_resize_min: ...or, when > 0, the short side resized to this, then
            a centre crop of the output size.
        mean, std: per-channel normalization, in 0..255 pixel units.
    """

    min_object_covered: float
    aspect_ratio_range: tuple
    area_range: tuple
    max_attempts: int
    use_boxes: bool
    fallback_center_crop: bool
    resize_method: str
    eval_crop_padding: int
    eval_resize_min: int
    mean: tuple
    std: tuple


TPU = Preset(
    0.1,
    (3 / 4, 4 / 3),
    (0.08, 1.0),
    10,
    False,
    True,
    "bicubic",
    32,
    0,
    IMAGENET_MEAN,
    IMAGENET_STD,
)
LEGACY = Preset(
    0.1,
    (0.75, 1.33),
    (0.05, 1.0),
    100,
    True,
    False,
    "bilinear",
    0,
    256,
    LEGACY_MEAN,
    (1.0, 1.0, 1.0),
)
SMALL = Preset(
    0.1, (3 / 4, 4 / 3), (0.8, 1.0), 10, False, False, "bilinear", 0, 0, (127.5,), (127.5,)
)
PRESETS = {"tpu": TPU, "legacy": LEGACY, "small": SMALL}


def get_preset(name, **overrides):
    """A preset by name, with some of its numbers changed.

    Args:
        name: "tpu", "legacy", "small" or another key of `PRESETS`.
        **overrides: fields of `Preset` to change (e.g. `use_boxes=True`).
    """
    if name not in PRESETS:
        raise ValueError(f"Unknown preprocessing preset {name!r}: use one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


__all__ = ["Preset", "get_preset"]
