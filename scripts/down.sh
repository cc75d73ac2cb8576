#!/usr/bin/env bash
# Destroys the sample app and stops the `berth up` that scripts/up.sh started.
set -euo pipefail
cd "$(dirname "$0")/.."
state=${BERTH_HOME:-$(pwd)/.berth}
api=${BERTH_API:-127.0.0.1:7070}
export BERTH_SERVER="http://$api"
[ -f "$state/data/admin.token" ] && export BERTH_TOKEN="$(cat "$state/data/admin.token")"
target/release/berth app demo/hello destroy --yes --timeout 60 || true
if [ -f "$state/berth.pid" ]; then
  kill "$(cat "$state/berth.pid")" 2>/dev/null || true
  rm -f "$state/berth.pid"
fi
echo "stopped"
