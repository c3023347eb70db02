#!/usr/bin/env bash
# Makes sure a Docker Engine answers on this machine: installs docker.io (and debootstrap, which
# builds the offline base image) when missing, then starts dockerd in the background if
# `docker info` fails, and waits up to 60 s for it. Needs root (or sudo) for the first start.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if docker info >/dev/null 2>&1; then
  exit 0
fi
if ! command -v docker >/dev/null 2>&1 || ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
  bash "$here/install-system-packages.sh" docker.io debootstrap
fi
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
log_dir=/var/log
[ -w "$log_dir" ] || log_dir="${TMPDIR:-/tmp}"
log="$log_dir/modelyard-dockerd.log"
echo "starting dockerd (log: $log)"
# setsid: the daemon outlives this script and the make/pytest process group that ran it.
$SUDO setsid dockerd >>"$log" 2>&1 < /dev/null &
for _ in $(seq 60); do
  if docker info >/dev/null 2>&1; then
    exit 0
  fi
  sleep 1
done
echo "dockerd did not answer within 60 s; last lines of $log:" >&2
tail -n 20 "$log" >&2
exit 1
