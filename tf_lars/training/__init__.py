"""The training program's parts: flags, strategy, data, callbacks, run."""
