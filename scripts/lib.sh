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
