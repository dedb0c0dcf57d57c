# syntax=docker/dockerfile:1
#
# freeze-sweeps in a container. One Dockerfile, two variants, chosen with the build argument TORCH_VARIANT:
#
#   docker build -t freeze-sweeps:cuda .                                 # default: CUDA PyTorch base, for GPU hosts
#   docker build --build-arg TORCH_VARIANT=cpu -t freeze-sweeps:cpu .    # CPU only: python slim + the CPU torch wheel
#
# BASE swaps the CUDA base (e.g. another CUDA/PyTorch pairing), CPU_BASE and TORCH_VERSION the CPU one.
# TORCH_VERSION is the version development pins (scripts/bootstrap.sh; tests/test_docker.py checks they agree). The CUDA
# variant keeps the torch its BASE ships: move BASE to the pytorch/pytorch tag of the same version once it is published.
# Run:   docker run --rm -v "$PWD/runs:/runs" freeze-sweeps:cpu            (the offline quickstart, results in ./runs)
# Study: docker run --rm -v "$PWD/studies:/studies:ro" -v "$PWD/runs:/runs" freeze-sweeps:cpu run /studies/my.yaml --output /runs
# docs/docker.md has the walkthrough, docker-compose.yml the distributed setup (PostgreSQL + MLflow + N workers).
#
# transformers 5 ignores PyTorch older than 2.6, so BASE must ship torch >= 2.6: the build checks it (see below).

ARG BASE=pytorch/pytorch:2.11.0-cuda12.8-cudnn9-runtime
ARG CPU_BASE=python:3.11-slim-bookworm
ARG TORCH_VARIANT=cuda

# ---- torch-cuda: the PyTorch image already ships a CUDA build of torch ---------------------------------------------
FROM ${BASE} AS torch-cuda

# ---- torch-cpu: python slim + the CPU wheel (a plain `pip install torch` would pull several GB of CUDA libraries) -----
FROM ${CPU_BASE} AS torch-cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN python -m pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

# ---- the image: freeze-sweeps on top of the chosen torch (BuildKit builds only the stage it needs) -------------------
# hadolint ignore=DL3006
FROM torch-${TORCH_VARIANT} AS runtime

ARG PSYCOPG2_VERSION=2.9.13
ARG SWEEPS_UID=1000
ARG SWEEPS_GID=1000

LABEL org.opencontainers.image.title="freeze-sweeps" \
      org.opencontainers.image.description="Optuna sweeps over layer-freezing strategies, logged to MLflow" \
      org.opencontainers.image.licenses="Apache-2.0"

# HF_HOME and the other caches live under /cache (writable by any uid, for `docker run --user`); USER/LOGNAME give
# getpass (used by MLflow for the run's user tag) a name when the uid has no passwd entry.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    HF_HOME=/cache/huggingface \
    XDG_CACHE_HOME=/cache \
    MPLCONFIGDIR=/cache/matplotlib \
    TRITON_CACHE_DIR=/cache/triton \
    USER=sweeps \
    LOGNAME=sweeps

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Non-root user (uid 1000 by default, so bind-mounted ./runs is usually writable; Ubuntu-based bases already have a
# uid-1000 user, which is replaced). /runs: outputs, /studies: study files, /mlartifacts: the compose MLflow server's
# artifact store, /work: the working directory.
RUN set -eux; \
    old_user="$(getent passwd "${SWEEPS_UID}" | cut -d: -f1 || true)"; \
    if [ -n "${old_user}" ]; then userdel "${old_user}"; fi; \
    old_group="$(getent group "${SWEEPS_GID}" | cut -d: -f1 || true)"; \
    if [ -n "${old_group}" ]; then groupdel "${old_group}"; fi; \
    groupadd --gid "${SWEEPS_GID}" sweeps; \
    useradd --uid "${SWEEPS_UID}" --gid "${SWEEPS_GID}" --create-home --shell /bin/bash sweeps; \
    mkdir -p /work /runs /studies /mlartifacts /cache/huggingface /cache/matplotlib /cache/triton; \
    chown -R sweeps:sweeps /work /runs /studies /mlartifacts /cache; \
    chmod 1777 /work /runs /cache /cache/huggingface /cache/matplotlib /cache/triton

WORKDIR /opt/freeze-sweeps

# Dependencies first (cached across code changes): project metadata only, so this installs every dependency and an
# empty freeze-sweeps. The constraint keeps the base's torch: nothing may swap it for another (multi-GB) build.
# psycopg2 is the PostgreSQL driver for the distributed setup (Optuna storage and the MLflow backend store), and
# optuna-dashboard (the dashboard extra) serves the compose setup's dashboard service.
COPY pyproject.toml README.md ./
RUN python -c 'import importlib.metadata as m; print("torch==" + m.version("torch"))' > /tmp/torch-constraint.txt \
 && python -m pip install --no-cache-dir --constraint /tmp/torch-constraint.txt \
      ".[quickstart,dashboard]" "psycopg2-binary==${PSYCOPG2_VERSION}" \
 && rm -rf build ./*.egg-info

# The code, then the project itself (no dependency changes).
COPY sweeps ./sweeps
COPY strategies ./strategies
RUN python -m pip install --no-cache-dir --no-deps --force-reinstall . \
 && rm -rf build ./*.egg-info \
 && python -I -c 'import sys, transformers.utils as u; import sweeps, strategies; \
sys.exit(0 if u.is_torch_available() else "transformers cannot use this torch (needs >= 2.6): pick a newer BASE")'

# The repository's studies, so `docker run IMAGE` runs the quickstart as is; mount your own over /studies.
COPY --chown=sweeps:sweeps studies/ /studies/

USER ${SWEEPS_UID}:${SWEEPS_GID}
WORKDIR /work

ENTRYPOINT ["python", "-m", "sweeps"]
CMD ["run", "/studies/quickstart.yaml", "--output", "/runs"]
