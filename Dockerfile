# taskd: the API node and the workers run from this one image (compose.yaml, docs/containers.md).
# Build from the repository root: docker build -t taskd .
FROM python:3.11-slim

# tini is PID 1: it forwards SIGTERM to taskd alone (taskd stops its own job processes, as
# systemd's KillMode=mixed does) and reaps whatever an exited child leaves behind. DejaVu is the
# font of the animatics' title cards (taskd/media/animatic_graph.py).
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini fonts-dejavu-core \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/taskd
COPY pyproject.toml README.md ./
COPY taskd ./taskd
# server: the API and the workers; s3: media in a bucket; otel: tracing, off until OTEL_* is set.
RUN pip install --no-cache-dir '.[server,s3,otel]'

# A system user with no shell; its home is the data directory (scratch, generated secrets).
RUN useradd --system --home-dir /var/lib/taskd --create-home --shell /usr/sbin/nologin taskd
USER taskd
WORKDIR /var/lib/taskd
ENV TASKD_DATA_DIR=/var/lib/taskd \
    TASKD_HTTP__HOST=0.0.0.0 \
    TASKD_HTTP__PORT=8001 \
    TASKD_LOGGING__FORMAT=json \
    PYTHONUNBUFFERED=1
VOLUME /var/lib/taskd
EXPOSE 8001

# On SIGTERM taskd stops taking work, gives running jobs execution.shutdown_grace (30 s) and
# hands the rest back; a cancelled task's processes get execution.cancel_grace (30 s) before
# SIGKILL. Docker waits only 10 s by default: run with --stop-timeout 45 (compose.yaml sets
# stop_grace_period: 45s), as the systemd units' TimeoutStopSec=45.
STOPSIGNAL SIGTERM

# The unauthenticated liveness probe of the API (GET /livez): the process answers. A worker-only
# container has no HTTP server; compose.yaml turns this check off for the workers.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/livez' % os.environ.get('TASKD_HTTP__PORT', '8001'), timeout=4)"]

ENTRYPOINT ["/usr/bin/tini", "--", "taskd"]
CMD ["serve"]
