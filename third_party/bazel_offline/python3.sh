#!/bin/sh
# The Python toolchain's interpreter: the environment tf_lars is installed in.
exec "${TF_LARS_PYTHON:-python3}" "$@"
