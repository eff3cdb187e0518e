#!/usr/bin/env bash
# One machine, the production shape: a Prefect server, process work pools `cpu` and `gpu`,
# the deployments of deployments/prefect.yaml, one worker per pool, then
#   prefect deployment run sft/full --watch
# (or the deployments named) to completion. Everything it started is shut down on exit.
#
#   deployments/stack.sh [PARAMS_JSON]                  # sft/full
#   deployments/stack.sh DEPLOYMENT PARAMS_JSON ...     # each in turn, e.g. sft/full then sft-sweep/sweep
#
# PARAMS_JSON is the flow-run parameters, e.g.
#   '{"config": "deployments/configs/tiny.yaml", "overrides": ["train.work_pool=gpu"]}'
# Environment:
#   PREFECT_PORT                          server port on 127.0.0.1 (default: a free one)
#   PREFECT_API_DATABASE_CONNECTION_URL   database (default SQLite under PREFECT_HOME); for PostgreSQL:
#                                         postgresql+asyncpg://USER:PASS@HOST:5432/prefect
#   PREFECT_HOME                          server state (default: .prefect/ in the repository)
#   SFT_STACK_KEEP=1                      leave server and workers running after the run
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV_BIN=${VENV_BIN:-$ROOT/.venv/bin}
export PATH=$VENV_BIN:$PATH
export SFT_PIPELINE_HOME=$ROOT
export PREFECT_HOME=${PREFECT_HOME:-$ROOT/.prefect}
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_LOGGING_LEVEL=${PREFECT_LOGGING_LEVEL:-INFO}
PORT=${PREFECT_PORT:-$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
export PREFECT_API_URL=http://127.0.0.1:$PORT/api
LOGS=$PREFECT_HOME/logs
mkdir -p "$LOGS"
PIDS=()

down() {  # workers first (they need the server to shut down cleanly), then the server
  [ "${SFT_STACK_KEEP:-0}" = 1 ] && { echo "stack left running at $PREFECT_API_URL"; return; }
  local i pid
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    pid=${PIDS[i]}
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}
trap down EXIT

start() {  # start NAME CMD...: a background process with its log in $LOGS/NAME.log
  local name=$1; shift
  "$@" >"$LOGS/$name.log" 2>&1 &
  PIDS+=($!)
}

start server prefect server start --host 127.0.0.1 --port "$PORT" --no-ui --analytics-off
for _ in $(seq 1 120); do
  python -c "import urllib.request,sys; urllib.request.urlopen('$PREFECT_API_URL/health', timeout=2)" 2>/dev/null && break
  sleep 1
done
python -c "import urllib.request; urllib.request.urlopen('$PREFECT_API_URL/health', timeout=5)" \
  || { echo "error: Prefect server did not start, see $LOGS/server.log" >&2; exit 1; }
echo "server: $PREFECT_API_URL"

for pool in cpu gpu; do
  prefect work-pool inspect "$pool" >/dev/null 2>&1 || prefect work-pool create "$pool" --type process >/dev/null
done
# One GPU slot: training runs take turns (a global concurrency limit shared by all workers).
prefect gcl inspect gpu >/dev/null 2>&1 || prefect gcl create gpu --limit 1 >/dev/null
prefect --no-prompt deploy --all --prefect-file deployments/prefect.yaml >"$LOGS/deploy.log" 2>&1 \
  || { cat "$LOGS/deploy.log" >&2; exit 1; }
echo "deployed: sft/full sft/filter sft-sweep/sweep sft-train/gpu"

start worker-cpu prefect worker start --pool cpu
start worker-gpu prefect worker start --pool gpu

[ $# -le 1 ] && set -- sft/full "${1:-"{}"}"
while [ $# -ge 2 ]; do
  echo "running: prefect deployment run $1 --watch"
  prefect deployment run "$1" --params "$2" --watch --watch-interval 2
  shift 2
done
