# Shared by scripts/run, scripts/test and scripts/bench (sourced, not run).

# Installs Debian packages with apt-get (through sudo when not root).
apt_install() {
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "scripts/$(basename "$0"): installing $* (apt-get)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# The nats-server binary (Debian installs it in /usr/sbin, often not on a user's PATH).
nats_bin() {
  command -v nats-server || echo /usr/sbin/nats-server
}

# promtool (checks the alert rules in deploy/prometheus) into target/tools: Debian ships it
# only inside the prometheus package, whose server we do not want installed or started, so
# the one binary is taken out of the package. Nothing happens when promtool is on PATH.
fetch_promtool() {
  command -v promtool >/dev/null && return 0
  [ -x target/tools/promtool ] && return 0
  local sudo="" tmp
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  tmp="$(mktemp -d)"
  echo "scripts/$(basename "$0"): fetching promtool (Debian's prometheus package, not installed)"
  ( cd "$tmp" && { apt-get download prometheus >/dev/null 2>&1 || { $sudo apt-get update -qq && apt-get download prometheus >/dev/null; }; } ) &&
    dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x" && mkdir -p target/tools && cp "$tmp/x/usr/bin/promtool" target/tools/ ||
    echo "scripts/$(basename "$0"): promtool unavailable; the alert rule checks will be skipped" >&2
  rm -rf "$tmp"
}

# schemathesis (PyPI; checks the /v1 API against its OpenAPI document) in a virtualenv in
# target/tools/venv. Needs python3 with venv (Debian: python3-venv), installed when missing.
fetch_schemathesis() {
  [ -x target/tools/venv/bin/schemathesis ] && return 0
  echo "scripts/$(basename "$0"): installing schemathesis (pip, into target/tools/venv)"
  mkdir -p target/tools
  if ! python3 -m venv target/tools/venv >/dev/null 2>&1; then
    rm -rf target/tools/venv
    apt_install python3 python3-venv
    python3 -m venv target/tools/venv
  fi
  target/tools/venv/bin/pip install -q --disable-pip-version-check schemathesis ||
    echo "scripts/$(basename "$0"): schemathesis unavailable; the API fuzz test will be skipped" >&2
}
