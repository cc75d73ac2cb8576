# Sourced by up.sh and test.sh: what building Berth needs beyond Rust. etcd-client's gRPC code is
# generated at build time by protoc (Debian: protobuf-compiler); the etcd tests run Debian's etcd
# (etcd-server). Installed with apt when this runs as root, else named.
berth_need() {
  local missing=()
  command -v protoc >/dev/null || missing+=(protobuf-compiler)
  if [ "${1:-}" = tests ]; then
    command -v etcd >/dev/null || missing+=(etcd-server)
    command -v chromium >/dev/null || missing+=(chromium)
  fi
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "Berth needs: ${missing[*]} (Debian: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
}
