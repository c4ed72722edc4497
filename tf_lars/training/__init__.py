"""The training program's parts: flags and the typed config (`config.py`),
the recipe, one engine per backend (`engines/`), the run (`run.py`) with its
position, inputs, checkpoints, faults, PreciseBN and summary."""
