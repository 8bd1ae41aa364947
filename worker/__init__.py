"""The Celery side of flowers: settings, the app, job state on Redis, thin tasks, a local cluster.

Nothing in this package imports TensorFlow at import time; tasks import the pipeline when they run.
"""
