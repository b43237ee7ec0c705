#!/usr/bin/env bash
# Builds islb's Go interop peer with Debian's Go toolchain and Go libraries (no modules,
# no network once the packages are installed).
#
#   bash interop/gopeer/build.sh [OUT]     # default OUT: target/gopeer
#
# OUT is relative to the repository root (absolute paths work too); this works from any
# directory. Missing packages are installed with apt-get (as root, or with sudo).
set -euo pipefail

src="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$src/../.." && pwd)"
out="${1:-target/gopeer}"
case "$out" in
  /*) ;;
  *) out="$root/$out" ;;
esac

gocode=/usr/share/gocode/src
need=()
command -v go >/dev/null 2>&1 || need+=(golang-go)
[ -d "$gocode/github.com/nats-io/nats.go" ] || need+=(golang-github-nats-io-go-nats-dev)
[ -d "$gocode/github.com/nats-io/nkeys" ] || need+=(golang-github-nats-io-nkeys-dev)
[ -d "$gocode/google.golang.org/protobuf/encoding/protowire" ] || need+=(golang-google-protobuf-dev)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing ${need[*]}" >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    golang-go golang-github-nats-io-go-nats-dev golang-github-nats-io-nkeys-dev golang-google-protobuf-dev >/dev/null
fi

# GOPATH mode: the package is copied into a temporary GOPATH whose second entry is
# Debian's tree of Go sources.
work="$(mktemp -d "${TMPDIR:-/tmp}/gopeer-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src/gopeer" "$(dirname "$out")"
cp "$src"/*.go "$work/src/gopeer/"
(
  cd "$work/src/gopeer"
  GOPATH="$work:/usr/share/gocode" GO111MODULE=off GOCACHE="${GOCACHE:-/tmp/gopeer-gocache}" \
    GOTOOLCHAIN=local CGO_ENABLED=0 go build -trimpath -o "$out" .
)
echo "built ${1:-target/gopeer}"
