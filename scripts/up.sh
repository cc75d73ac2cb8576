#!/usr/bin/env bash
# Builds Berth, starts it on this machine (`berth up`), deploys a sample app and says where it answers.
# The sample image is built locally FROM scratch: nothing is pulled. Without a Docker engine the
# sample runs as plain processes (exec driver). Stop everything with: scripts/down.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
state=${BERTH_HOME:-$root/.berth}
api=${BERTH_API:-127.0.0.1:7070}
mkdir -p "$state"
. scripts/needs.sh
berth_need

echo "==> building berth and the sample app"
cargo build --release -q -p berth
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -q -p berth-testapp --target x86_64-unknown-linux-gnu
sample_bin="$root/target/x86_64-unknown-linux-gnu/release/berth-testapp"
berth="$root/target/release/berth"

if docker info >/dev/null 2>&1; then
  echo "==> importing the sample image berth-sample:v1 (FROM scratch, one static binary)"
  ctx=$(mktemp -d)
  cp "$sample_bin" "$ctx/berth-testapp"
  tar -C "$ctx" -c berth-testapp | docker import \
    --change 'ENTRYPOINT ["/berth-testapp"]' --change 'ENV APP_VERSION=v1' - berth-sample:v1 >/dev/null
  rm -rf "$ctx"
  cat > "$state/hello.yaml" <<YAML
group: demo
name: hello
image: berth-sample:v1
instances: 3
cpu: 0.1
memory: 32
ports: [8080]
health:
  http: /health
  interval: 1s
  timeout: 1s
  grace: 10s
upgrade:
  min_healthy_time: 2s
YAML
else
  echo "==> no Docker engine answers: the sample runs on the exec driver"
  cat > "$state/hello.yaml" <<YAML
group: demo
name: hello
driver: exec
command: [$sample_bin]
instances: 3
health:
  http: /health
  interval: 1s
  timeout: 1s
upgrade:
  min_healthy_time: 2s
YAML
fi

if [ -f "$state/berth.pid" ] && kill -0 "$(cat "$state/berth.pid")" 2>/dev/null; then
  echo "==> berth is already running (pid $(cat "$state/berth.pid"))"
else
  echo "==> starting berth up (API http://$api, log $state/berth.log)"
  nohup "$berth" up --data-dir "$state/data" --api "$api" --http "${BERTH_HTTP:-127.0.0.1:8080}" >"$state/berth.log" 2>&1 &
  echo $! >"$state/berth.pid"
  for _ in $(seq 1 100); do
    curl -fsS "http://$api/v1/health" >/dev/null 2>&1 && break
    sleep 0.1
  done
fi

export BERTH_SERVER="http://$api"
# The admin token berth up made at first start; it also saved it as the CLI's `local` context.
export BERTH_TOKEN="$(cat "$state/data/admin.token")"
"$berth" deploy -f "$state/hello.yaml" --timeout 120
echo
echo "Berth is up. API: http://$api; the CLI here acts as admin through its context \`local\` (berth context ls)"
echo "demo/hello answers through the router:"
echo "  curl -H 'Host: hello.demo.berth.local' http://${BERTH_HTTP:-127.0.0.1:8080}/"
echo "and at each instance:"
"$berth" app hello status -o json | python3 -c 'import json,sys
for i in json.load(sys.stdin)["instances"]:
    if i["state"] == "running": print("  http://" + i["address"] + "/")'
echo "Router status: curl http://127.0.0.1:7071/status"
echo "Try: $berth app hello scale 5 | $berth app hello status | $berth events | scripts/down.sh"
