"""tf_lars: large-batch training for Keras 3 (LARS, warmup schedules, tools).

`import tf_lars` registers `LARS`, the schedules and the models' layers with
Keras's serialization, so saved models and `keras.optimizers.get("LARS")`
find them.
"""

import keras

from tf_lars import models, schedules
from tf_lars.optimizer import LARS

__version__ = "0.2.0"

# Also reachable by its short name, as Keras's own optimizers are.
keras.saving.get_custom_objects().setdefault("LARS", LARS)
keras.saving.get_custom_objects().setdefault("lars", LARS)

__all__ = ["LARS", "models", "schedules", "__version__"]
