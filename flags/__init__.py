"""The flagfiles, installed as the package `tf_lars.flagfiles` (see setup.py)."""
