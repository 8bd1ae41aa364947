# The flowers image: the `flowers` CLI, and by default a worker that serves the Redis queue at
# FLOWERS_BROKER_URL as a non-root user. Two targets:
#
#   docker build -t flowers .                            # full: trains and labels (TensorFlow)
#   docker build --target label -t flowers:label .       # labels only: LiteRT, no TensorFlow
#   docker run --rm -e FLOWERS_BROKER_URL=redis://HOST:6379/0 flowers
#
# A labelling-only worker that receives a training task fails that job with one line saying so:
# give training its own FLOWERS_QUEUE served by full workers when a cluster mixes the two.
#
# Pretrained weights: files named as Keras names them, baked into FLOWERS_WEIGHTS_DIR from
# the build-context folder WEIGHTS_DIR (default `weights`; a missing folder is fine).
# - With internet on the workers, leave it empty or absent: Keras downloads the weights into
#   ~/.keras on first use (once per container, so bake them anyway for large clusters).
# - Air-gapped cluster: copy the files in before building, e.g.
#     mkdir -p weights && cp ../shared/weights/keras/*.h5 weights/ && docker build -t flowers .
#   or build with --build-arg WEIGHTS_DIR=some/other/folder (inside the build context).
# UID: the worker's user id; match the owner of the host folder mounted for photos and bundles.

# Stage 1: only the weight files. pyproject.toml anchors the COPY so that the wildcard may
# match nothing with either builder (BuildKit or the classic one).
FROM python:3.11-slim AS weights
ARG WEIGHTS_DIR=weights
COPY pyproject.toml ${WEIGHTS_DIR}* /weights/
RUN rm /weights/pyproject.toml

FROM python:3.11-slim AS label

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

ARG UID=1000
RUN groupadd --gid "${UID}" flowers \
 && useradd --uid "${UID}" --gid flowers --create-home --home-dir /home/flowers flowers

WORKDIR /opt/flowers/src

# Dependencies first, read from pyproject.toml: this layer is rebuilt only when the dependency
# list changes, not on every source edit.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# The project itself (dependencies above are already satisfied).
COPY README.md ./
COPY flowers ./flowers
COPY models ./models
COPY worker ./worker
COPY cli ./cli
COPY review ./review
RUN pip install . && rm -rf build ./*.egg-info

# Read-only for the worker user: root owns the baked weights.
COPY --from=weights /weights/ /opt/flowers/weights/

ENV FLOWERS_HOME=/data/flowers-home \
    FLOWERS_WEIGHTS_DIR=/opt/flowers/weights

# Created here, owned by the worker user, so a named volume mounted on it starts writable.
RUN mkdir -p "${FLOWERS_HOME}" && chown flowers:flowers "${FLOWERS_HOME}"

USER flowers
WORKDIR /home/flowers

CMD ["flowers", "worker"]

# The full image (the default target): the labelling image plus training's TensorFlow.
FROM label AS full
USER root
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/opt/flowers/src/pyproject.toml', 'rb'))['project']['optional-dependencies']['train']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt
USER flowers
