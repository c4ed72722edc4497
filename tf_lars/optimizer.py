"""LARS: layer-wise adaptive rate scaling, as a Keras 3 optimizer.

The update, in the order the code below follows it (You, Gitman, Ginsburg,
"Large Batch Training of Convolutional Networks", arXiv:1708.03888, Alg. 1;
the recipe of You et al., "ImageNet Training in Minutes", arXiv:1709.05011):

    g = grad + wd * w                      # wd = 0 for w excluded from decay
    r = trust ratio of (w, grad, g)        # 1 if excluded from adaptation
    v = momentum * v + lr * r * g          # the rate sits inside the buffer
    w = w - v                              # Nesterov: w - (momentum*v + lr*r*g)

Trust-ratio forms (`trust_ratio=`):

    "paper":            eta * ||w|| / (||grad|| + wd * ||w|| + eps)
    "decayed_gradient": eta * ||w|| / (||grad + wd * w|| + eps)

"paper" is the rate of the LARS paper, tf.contrib, the TPU reference, the
MLPerf TF2 reference, timm, NVIDIA LARC and torchlars; "decayed_gradient" is
the TensorFlow Model Garden's and optax's. By the triangle inequality the
first is never larger than the second. Where ||w|| or the denominator's
gradient norm is zero, the ratio is 1.

Keeping the rate inside the momentum buffer matches the paper, Keras SGD, the
Model Garden and optax. PyTorch-based LARS (timm, apex LARC, torchlars) keep
it outside (`v = m*v + r*g; w -= lr*v`); the two agree while the rate is
constant and differ while a schedule changes it.
"""

import re
from collections.abc import Sequence
from typing import Any, Optional

import keras
from keras import ops

_TRUST_RATIOS = ("paper", "decayed_gradient")


def _three(values: Any) -> tuple[float, float, float]:
    ratio, w_norm, g_norm = (float(v) for v in values)
    return ratio, w_norm, g_norm


def _norm(x: Any) -> Any:
    return ops.sqrt(ops.sum(ops.square(x)))


def _dense(gradient: Any, variable: Any) -> Any:
    """A gradient as a dense tensor; repeated entries of a sparse one add up.

    LARS's norms need the dense gradient (decay and momentum touch every row
    anyway). TensorFlow's `IndexedSlices` (an embedding's gradient) may name
    a row more than once, and Keras's `convert_to_tensor` passes them through
    unchanged, so their rows are scattered here; a torch sparse tensor (from
    a custom loop) is densified by torch, JAX's BCOO by
    `convert_to_tensor(sparse=False)`.
    """
    if type(gradient).__name__ == "IndexedSlices":
        return ops.scatter(
            ops.expand_dims(gradient.indices, -1), gradient.values, ops.shape(variable)
        )
    if getattr(gradient, "is_sparse", False):  # torch.sparse_coo_tensor
        return gradient.to_dense()
    return ops.convert_to_tensor(gradient, sparse=False)


def _compile_patterns(patterns: Optional[Sequence[str]], argument: str) -> Any:
    if patterns is None:
        return None
    if isinstance(patterns, str):
        patterns = [patterns]
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except (re.error, TypeError) as e:
            raise ValueError(
                f"`{argument}` must be a list of regular expressions. "
                f"Received: {argument}={patterns!r} ({e})"
            ) from None
    return compiled


@keras.saving.register_keras_serializable(package="tf_lars")
class LARS(keras.optimizers.Optimizer):
    """Layer-wise Adaptive Rate Scaling (LARS) with momentum.

    Update rule for a variable `w` with gradient `grad`:

    ```python
    g = grad + weight_decay * w               # unless excluded from decay
    r = trust_ratio(w, grad, g)               # 1 if excluded from adaptation
    v = momentum * v + learning_rate * r * g
    w = w - v                                 # nesterov: w - (momentum*v + lr*r*g)
    ```

    with `trust_ratio="paper"`: `eta*||w|| / (||grad|| + wd*||w|| + eps)`, or
    `trust_ratio="decayed_gradient"`: `eta*||w|| / (||g|| + eps)`; the ratio
    is 1 where either norm is zero. With `clip_trust_ratio=True` (NVIDIA
    LARC's clip mode) `r` becomes `min(r / learning_rate, 1)`, so the local
    rate `lr * r` never exceeds the global rate.

    Which variables are decayed and adapted: the arguments
    `exclude_from_weight_decay` and `exclude_from_layer_adaptation` are lists
    of regular expressions searched in each variable's path
    (`"conv2d/kernel"`, `"batch_normalization/gamma"`). When neither is
    given, variables of rank <= 1 (biases, BatchNorm gamma and beta) get
    neither decay nor adaptation, which is common practice. When only
    `exclude_from_weight_decay` is given, layer adaptation uses the same
    list; when only `exclude_from_layer_adaptation` is given, decay keeps the
    rank rule. Pass `[]` to exclude nothing.

    Weight decay here is LARS's own, coupled one: it enters the trust ratio
    and the step. It is not the Keras base class's decoupled decay, which
    this optimizer never applies.

    Args:
        learning_rate: float or `keras.optimizers.schedules.LearningRateSchedule`.
            Defaults to `0.1`.
        momentum: float in [0, 1). Defaults to `0.9`.
        nesterov: bool. Defaults to `False`.
        weight_decay: float >= 0, the coupled decay. Defaults to `0.0`.
        trust_coefficient: float > 0, the paper's eta. Defaults to `0.001`.
        epsilon: float >= 0 added to the ratio's denominator. Defaults to `0.0`.
        trust_ratio: `"paper"` or `"decayed_gradient"`. Defaults to `"paper"`.
        clip_trust_ratio: bool, LARC's clip mode. Defaults to `False`.
        exclude_from_weight_decay: list of regexes, or None (see above).
        exclude_from_layer_adaptation: list of regexes, or None (see above).
        track_trust_ratios: bool. If True, each adapted variable's latest
            `[trust ratio, ||w||, ||grad||]` is kept in an optimizer variable
            that `trust_ratio_stats()` returns. Defaults to `False` (no cost).
        **kwargs: any other argument of `keras.optimizers.Optimizer`
            (`clipnorm`, `global_clipnorm`, `use_ema`,
            `gradient_accumulation_steps`, `loss_scale_factor`, `name`, ...).
            Its decoupled `weight_decay` is not accepted.

    Reference:
        You, Gitman, Ginsburg, 2017, https://arxiv.org/abs/1708.03888;
        You, Zhang, Hsieh, Demmel, Keutzer, 2018, https://arxiv.org/abs/1709.05011.
    """

    def __init__(
        self,
        learning_rate: Any = 0.1,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        epsilon: float = 0.0,
        trust_ratio: str = "paper",
        clip_trust_ratio: bool = False,
        exclude_from_weight_decay: Optional[Sequence[str]] = None,
        exclude_from_layer_adaptation: Optional[Sequence[str]] = None,
        track_trust_ratios: bool = False,
        name: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        # `weight_decay` is deliberately not passed on: the base class's decay
        # is decoupled and would be applied on top of LARS's own.
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"`momentum` must be in [0, 1). Received: momentum={momentum}")
        if float(weight_decay) < 0.0:
            raise ValueError(f"`weight_decay` must be >= 0. Received: weight_decay={weight_decay}")
        if float(trust_coefficient) <= 0.0:
            raise ValueError(
                f"`trust_coefficient` must be > 0. Received: trust_coefficient={trust_coefficient}"
            )
        if float(epsilon) < 0.0:
            raise ValueError(f"`epsilon` must be >= 0. Received: epsilon={epsilon}")
        if trust_ratio not in _TRUST_RATIOS:
            raise ValueError(
                f"`trust_ratio` must be one of {_TRUST_RATIOS}. "
                f"Received: trust_ratio={trust_ratio!r}"
            )
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.weight_decay_rate = float(weight_decay)
        self.trust_coefficient = float(trust_coefficient)
        self.epsilon = float(epsilon)
        self.trust_ratio = trust_ratio
        self.clip_trust_ratio = bool(clip_trust_ratio)
        self.track_trust_ratios = bool(track_trust_ratios)
        self._decay_patterns = _compile_patterns(
            exclude_from_weight_decay, "exclude_from_weight_decay"
        )
        self._adaptation_patterns = _compile_patterns(
            exclude_from_layer_adaptation, "exclude_from_layer_adaptation"
        )
        if self._adaptation_patterns is None:
            self._adaptation_patterns = self._decay_patterns

    def exclude_from_weight_decay(self, var_list: Any = None, var_names: Any = None) -> None:
        """Not used: LARS takes its exclusions as constructor arguments
        (`exclude_from_weight_decay=[regex, ...]`); raises ValueError saying so."""
        raise ValueError(
            "LARS takes its exclusions as constructor arguments: "
            "LARS(exclude_from_weight_decay=[regex, ...], "
            "exclude_from_layer_adaptation=[regex, ...])."
        )

    @staticmethod
    def _excluded(variable: Any, patterns: Any) -> bool:
        if patterns is None:  # Common practice: rank <= 1 is excluded.
            return len(variable.shape) <= 1
        path = getattr(variable, "path", variable.name)
        return any(p.search(path) for p in patterns)

    def build(self, variables: Any) -> None:
        """Creates the momentum buffers and resolves both masks by index.

        Masks are resolved here because under the TF backend `update_step`
        receives a raw `tf.Variable`, which has no `.path`.
        """
        if self.built:
            return
        super().build(variables)
        self._decayed = [
            self.weight_decay_rate > 0 and not self._excluded(v, self._decay_patterns)
            for v in variables
        ]
        self._adapted = [not self._excluded(v, self._adaptation_patterns) for v in variables]
        self.momentums = []
        if self.momentum:
            self.momentums = self.add_optimizer_variables(variables, "momentum")
        self._stats = {}
        self._stat_paths = {}
        if self.track_trust_ratios:
            for i, v in enumerate(variables):
                if self._adapted[i]:
                    self._stat_paths[i] = v.path
                    self._stats[i] = self.add_variable(
                        shape=(3,),
                        dtype="float32",
                        name=f"{v.path.replace('/', '_')}_lars_stats",
                    )

    def _ratio(self, w_norm: Any, grad_norm: Any, g_norm: Any, wd: Any, learning_rate: Any) -> Any:
        """The trust ratio; `g_norm` is ||grad + wd*w||, `wd` the decay used."""
        dtype = w_norm.dtype
        eta = ops.cast(self.trust_coefficient, dtype)
        eps = ops.cast(self.epsilon, dtype)
        if self.trust_ratio == "paper":
            denominator_norm = grad_norm
            ratio = eta * w_norm / (grad_norm + ops.cast(wd, dtype) * w_norm + eps)
        else:
            denominator_norm = g_norm
            ratio = eta * w_norm / (g_norm + eps)
        if self.clip_trust_ratio:
            ratio = ops.minimum(ratio / learning_rate, ops.cast(1.0, dtype))
        valid = ops.logical_and(w_norm > 0, denominator_norm > 0)
        return ops.where(valid, ratio, ops.ones_like(ratio))

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        learning_rate = ops.cast(learning_rate, dtype)
        grad = ops.cast(_dense(gradient, variable), dtype)

        # 1. Coupled weight decay.
        wd = self.weight_decay_rate if self._decayed[index] else 0.0
        g = grad + ops.cast(wd, dtype) * variable if wd else grad

        # 2. Trust ratio.
        scaled_lr = learning_rate
        if self._adapted[index]:
            w_norm = _norm(variable)
            grad_norm = _norm(grad)
            # ||grad + wd*w|| only where the ratio uses it (an extra pass).
            g_norm = _norm(g) if wd and self.trust_ratio != "paper" else grad_norm
            ratio = self._ratio(w_norm, grad_norm, g_norm, wd, learning_rate)
            scaled_lr = learning_rate * ratio
            if self.track_trust_ratios:
                stats = ops.stack([ratio, w_norm, grad_norm])
                self.assign(self._stats[index], ops.cast(stats, "float32"))

        # 3. Momentum (the rate inside the buffer), 4. the step.
        step = scaled_lr * g
        if not self.momentum:
            self.assign_sub(variable, step)
            return
        v = self.momentums[index]
        momentum = ops.cast(self.momentum, dtype)
        self.assign(v, momentum * v + step)
        if self.nesterov:
            self.assign_sub(variable, momentum * v + step)
        else:
            self.assign_sub(variable, v)

    def trust_ratio_stats(self) -> dict[str, tuple[float, float, float]]:
        """Latest `{path: (trust_ratio, weight_norm, grad_norm)}` as numpy.

        Needs `track_trust_ratios=True` and a built optimizer; empty otherwise.
        The ratio is the one applied (after clipping; 1 where a norm is 0).
        """
        if not self.built or not self.track_trust_ratios:
            return {}
        return {
            path: _three(ops.convert_to_numpy(self._stats[i]))
            for i, path in self._stat_paths.items()
        }

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()

        def patterns(compiled: Any) -> Optional[list[str]]:
            return None if compiled is None else [p.pattern for p in compiled]

        config.update(
            {
                "momentum": self.momentum,
                "nesterov": self.nesterov,
                "weight_decay": self.weight_decay_rate,
                "trust_coefficient": self.trust_coefficient,
                "epsilon": self.epsilon,
                "trust_ratio": self.trust_ratio,
                "clip_trust_ratio": self.clip_trust_ratio,
                "exclude_from_weight_decay": patterns(self._decay_patterns),
                "exclude_from_layer_adaptation": patterns(self._adaptation_patterns),
                "track_trust_ratios": self.track_trust_ratios,
            }
        )
        return config
