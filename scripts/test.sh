#!/usr/bin/env bash
# Runs every test: unit, property and end-to-end against the real Docker engine.
# Docker tests skip with a printed reason when no engine answers, unless BERTH_REQUIRE_DOCKER=1.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/needs.sh
berth_need tests
exec cargo test --workspace "$@"
