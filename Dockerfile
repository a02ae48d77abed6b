# One image for every Tillflow service: each container runs one `tillflow`
# subcommand (docker-compose.yml sets it as the command).
#
#   docker build -t tillflow:0.1.0 .
#   docker run --rm tillflow:0.1.0 --help
#
# The Python base is pinned to a patch release on Debian bookworm, whose
# postgresql-client-15 gives pg_dump/pg_restore the same major as the server.
ARG PYTHON_IMAGE=python:3.11.17-slim-bookworm

# ---------------------------------------------------------------- build stage
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv
WORKDIR /src

# Dependencies first, in their own layer, so a code change does not reinstall
# them. requirements.lock pins the whole tree, test tools included; it is used
# as constraints so only the runtime dependencies of pyproject.toml go in, each
# at its locked version. Wheels only: the build needs no compiler either.
COPY pyproject.toml requirements.lock ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > runtime.txt \
 && pip install --only-binary=:all: --constraint requirements.lock --requirement runtime.txt

COPY tillflow ./tillflow
COPY etl ./etl
COPY consumer ./consumer
COPY backup ./backup
RUN pip install --no-deps . \
 && pip check

# ---------------------------------------------------------------- final stage
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="tillflow" \
      org.opencontainers.image.description="Tillflow: transactions through Kafka into PostgreSQL, exactly once"

# postgresql-client-15 for the backup service (pg_dump, pg_restore, psql).
# The package name pins the major; the patch follows Debian security updates,
# which an exact version pin would turn into a failed build once superseded.
# /data/* belong to the service user so that a new named volume mounted on one
# of them starts with that ownership (Docker copies it into the empty volume).
# /data/alertmanager is readable by all: Alertmanager (user nobody) reads the
# configuration alertmanager-config renders there.
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-client-15 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tillflow \
 && useradd --system --uid 10001 --gid tillflow --home-dir /nonexistent \
        --no-create-home --shell /usr/sbin/nologin tillflow \
 && install -d -o tillflow -g tillflow -m 0750 /data /data/inbox /data/archive /data/failed /data/spool /data/backups \
 && install -d -o tillflow -g tillflow -m 0755 /data/alertmanager

# The 15 binaries first on PATH: Debian's /usr/bin/pg_dump is a Perl wrapper
# that picks a cluster version; the backup wants exactly the 15 tools.
ENV PATH=/opt/venv/bin:/usr/lib/postgresql/15/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONFAULTHANDLER=1

COPY --from=build /opt/venv /opt/venv
# `tillflow migrate` reads the numbered SQL files from here (cwd is /app).
COPY postgres/migrations /app/postgres/migrations
WORKDIR /app

USER 10001:10001

# Healthy when the process's Prometheus endpoint answers on METRICS_PORT: the
# long-running services (consume, watch) set it. A container without
# METRICS_PORT (one-shot commands) has nothing to probe and reports healthy.
# docker-compose.yml repeats this exact command (tests/unit/test_compose.py checks).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; p = int(os.environ.get('METRICS_PORT') or 0); p and r.urlopen(f'http://127.0.0.1:{p}/metrics', timeout=4)"]

ENTRYPOINT ["tillflow"]
CMD ["--help"]
