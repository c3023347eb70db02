#!/usr/bin/env bash
# Builds the offline base image of model images, NAME (default modelyard/base:bookworm): a
# minimal Debian bookworm root file system with python3 (3.11, the same minor as the project's
# virtualenv, so its cp311 wheels install), venv and CA certificates, made with debootstrap
# and `docker import` because no image registry is reachable. Skips an image that exists.
# Needs root (or sudo) and a running Docker Engine (infra/scripts/start-docker.sh).
set -euo pipefail
name="${1:-modelyard/base:bookworm}"
mirror="${MODELYARD_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
if docker image inspect "$name" >/dev/null 2>&1; then
  echo "base image $name exists"
  exit 0
fi
command -v debootstrap >/dev/null 2>&1 || bash "$(dirname "$0")/../scripts/install-system-packages.sh" debootstrap
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
root="$(mktemp -d "${TMPDIR:-/tmp}/modelyard-rootfs.XXXXXX")"
trap '$SUDO rm -rf "$root"' EXIT
started=$(date +%s)
$SUDO debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" "$mirror" >/dev/null
# Package caches and docs are not needed at run time: a smaller image imports and starts faster.
$SUDO rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
  "$root"/usr/share/man/* "$root"/usr/share/locale/*
$SUDO tar -C "$root" -c . | docker import \
  -c 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  -c 'CMD ["python3"]' -m "debootstrap --variant=minbase bookworm + python3" - "$name" >/dev/null
echo "built base image $name in $(( $(date +%s) - started )) s"
