# poolbench's two images, from one shared build stage:
#   docker build --target workload -t poolbench-workload:dev .   (one replica: the base install only)
#   docker build --target operator -t poolbench-operator:dev .   (the kopf operator: the [operator] extra)
# BASE_IMAGE is any Debian-like image with Python >= 3.11, pip and useradd; the default is the public
# python image, pinned by tag. Builds without a registry pass a locally made base instead.
ARG BASE_IMAGE=python:3.11.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY poolbench ./poolbench
COPY workload ./workload
COPY operator/poolbench_operator ./operator/poolbench_operator
RUN python3 -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# What both images share: an unprivileged user (numeric, so runAsNonRoot can verify it) with a real HOME.
FROM ${BASE_IMAGE} AS runtime
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/poolbench --shell /usr/sbin/nologin poolbench
ENV HOME=/home/poolbench \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /home/poolbench

# No kopf, kubernetes, matplotlib or embedded PostgreSQL here: the base install plus the [drivers] extra
# (psycopg 3, asyncpg), so spec.workload.driver works in the cluster too.
FROM runtime AS workload
COPY --from=build /wheels /tmp/wheels
RUN python3 -m pip install "$(ls /tmp/wheels/poolbench-*.whl)[drivers]" && rm -rf /tmp/wheels
USER 10001:10001
ENTRYPOINT ["python3", "-m", "workload"]

# Runs with a read-only root filesystem: nothing is written at run time.
FROM runtime AS operator
COPY --from=build /wheels /tmp/wheels
RUN python3 -m pip install "$(ls /tmp/wheels/poolbench-*.whl)[operator]" && rm -rf /tmp/wheels
USER 10001:10001
ENTRYPOINT ["kopf", "run", "-m", "poolbench_operator.handlers"]
CMD ["--standalone", "--all-namespaces"]
