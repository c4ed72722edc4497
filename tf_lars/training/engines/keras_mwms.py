"""Makes Keras 3's `model.fit` work under MultiWorkerMirroredStrategy.

Keras 3 (TF backend, up to at least 3.15) breaks there in two places
(keras-team/keras#20585, tensorflow/tensorflow#72388):

1. `TensorFlowTrainer._maybe_symbolic_build` reduces the first distributed
   batch with `strategy.reduce("MEAN", ...)` only to learn its shapes;
   eagerly, under MWMS, that fails with "Attempt to convert a value
   (PerReplica...)". The fix reads the shapes from this worker's first
   local replica instead (no cross-worker traffic needed for shapes).
2. `reduce_per_replica` reduces every log value with
   `strategy.reduce("MEAN", v, axis=0)`, and scalars (loss, metrics) have no
   axis 0: "Invalid reduction dimension 0 for input with 0 dimensions". The
   fix reduces scalars with `axis=None`.

`apply()` patches each place only if the installed Keras still has the
faulty line (found in its source), and the patched code takes the new
path only in multi-worker mode; everywhere else Keras's own code runs.
"""

import inspect

import tensorflow as tf
from keras.src.backend.tensorflow import trainer as tf_trainer

_FAULTY_BUILD = 'distribute_strategy.reduce(\n                        "MEAN"'
_FAULTY_REDUCE = 'strategy.reduce("MEAN", v, axis=0)'
_applied: set[str] = set()


def _multi_worker(strategy):
    return (
        isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        and strategy.extended._in_multi_worker_mode()
    )


def _source(obj):
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


def needed():
    """Which of the two faults the installed Keras has."""
    build = _source(tf_trainer.TensorFlowTrainer._maybe_symbolic_build)
    reduce = _source(tf_trainer.reduce_per_replica)
    return {
        "symbolic_build": " ".join(_FAULTY_BUILD.split()) in " ".join(build.split()),
        "scalar_reduce": _FAULTY_REDUCE in reduce,
    }


def apply():
    """Patches what `needed()` finds; idempotent. Returns the patched names."""
    faults = needed()
    if faults["symbolic_build"] and "symbolic_build" not in _applied:
        original_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build

        def _maybe_symbolic_build(self, iterator=None, data_batch=None):
            strategy = self._distribute_strategy
            if strategy is None or iterator is None or not _multi_worker(strategy):
                return original_build(self, iterator=iterator, data_batch=data_batch)
            # Keras >= 3.11 yields (begin, end, iterator), 3.10 (step, iterator).
            for *_, it in iterator:
                batch = next(it)
                data_batch = tf.nest.map_structure(
                    lambda v: (
                        strategy.experimental_local_results(v)[0]
                        if isinstance(v, tf.distribute.DistributedValues)
                        else v
                    ),
                    batch,
                )
                break
            with strategy.scope():
                self._symbolic_build(data_batch=data_batch)

        tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
        _applied.add("symbolic_build")

    if faults["scalar_reduce"] and "scalar_reduce" not in _applied:
        original_reduce = tf_trainer.reduce_per_replica

        def reduce_per_replica(values, strategy, reduction):
            if not _multi_worker(strategy) or reduction not in ("auto", "mean"):
                return original_reduce(values, strategy, reduction)

            def reduce(v):
                rank = v.values[0].shape.rank if hasattr(v, "values") else v.shape.rank
                return strategy.reduce("MEAN", v, axis=0 if rank else None)

            return tf.nest.map_structure(reduce, values)

        tf_trainer.reduce_per_replica = reduce_per_replica
        _applied.add("scalar_reduce")
    return sorted(_applied)
