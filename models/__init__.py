"""The flowers ML pipeline: photos in, bottlenecks, a trained head and a model bundle out.

Plain functions and classes over paths and arrays; nothing here knows about Celery.
TensorFlow is imported only inside the modules that build or run a network.
"""
