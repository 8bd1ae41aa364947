"""flowers: retrain the top of an ImageNet network on folders of photos, and label photo
collections with it through Celery workers on Redis.

The one importable name of the project. Its packages keep their folders at the repository
root (the layout the project is known by), mapped under this name when installed
(pyproject.toml's `package-dir`); in a checkout, the links in this folder make the same names
importable (for mypy, and `python -m flowers.cli` without installing):

    flowers.cli       the click commands: validate, enqueue by task name, wait
    flowers.worker    the Celery app, settings, job records on Redis, thin tasks
    flowers.models    the ML pipeline: plain functions and classes, no Celery
    flowers.review    review pages: a labelled CSV or a bundle in, one HTML page out

Imports go downward only: cli -> worker -> models; review -> models, and worker.results for
the results CSV's format (never the Celery app).
"""
