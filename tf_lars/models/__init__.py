"""Image classifiers, by name: `build("resnet50", num_classes=1000, ...)`."""

from typing import Any

from tf_lars.models.alexnet import alexnet_bn
from tf_lars.models.resnet import resnet50, small_resnet

MODELS = {
    "resnet50": resnet50,
    "alexnet_bn": alexnet_bn,
    "resnet8": lambda **kw: small_resnet(depth=8, **kw),
    "resnet20": lambda **kw: small_resnet(depth=20, **kw),
    "resnet32": lambda **kw: small_resnet(depth=32, **kw),
    "resnet56": lambda **kw: small_resnet(depth=56, **kw),
}


def build(name: str, **kwargs: Any) -> Any:
    """Builds model `name` (call it inside `strategy.scope()`).

    Args:
        name: a key of `MODELS`: "resnet50", "alexnet_bn", "resnet8",
            "resnet20", "resnet32" or "resnet56".
        **kwargs: the builder's arguments (`num_classes`, `image_size`, ...).
    """
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}: use one of {sorted(MODELS)}")
    builder: Any = MODELS[name]
    return builder(**kwargs)


__all__ = ["MODELS", "build", "alexnet_bn", "resnet50", "small_resnet"]
