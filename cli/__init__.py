"""The `flowers` command line: click commands that validate, enqueue by task name and wait.

No module here imports TensorFlow at import time; only `flowers label` runs a model itself.
"""
