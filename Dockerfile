# s3batch worker image: `docker build -t s3batch .`, then run a worker (the default command),
# `celery -A workers.app beat`, or, built with `--build-arg INSTALL_FLOWER=true`, Flower.
# Pinned by exact tag and digest (a tag is rebuilt in place); move both together.
FROM python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1

# Flower is a monitoring UI, not a dependency of the service: only the flower image installs it.
ARG INSTALL_FLOWER=false

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed numeric uid, so that orchestrators that insist on runAsNonRoot can check it.
RUN groupadd --system --gid 10001 s3batch \
    && useradd --system --uid 10001 --gid s3batch --create-home --home-dir /home/s3batch s3batch

# Build from a scratch copy and remove it afterwards: the installed package is what runs, and no
# source tree in the working directory can shadow it.
COPY pyproject.toml README.md /tmp/s3batch-src/
COPY batcher/ /tmp/s3batch-src/batcher/
COPY workers/ /tmp/s3batch-src/workers/
RUN pip install /tmp/s3batch-src \
    && if [ "$INSTALL_FLOWER" = "true" ]; then pip install "flower==2.0.1"; fi \
    && rm -rf /tmp/s3batch-src

USER 10001:10001
# Writable by the user: beat keeps its schedule file (celerybeat-schedule) in the working directory.
WORKDIR /home/s3batch

CMD ["celery", "-A", "workers.app", "worker", "--loglevel=INFO"]
