#!/usr/bin/env bash
# Make a Docker engine and the debian:bookworm-slim base image available on a machine that has
# neither, without any container registry (as on our CI). Idempotent: each step is skipped when
# its result is already there. Needs root for apt-get, dockerd and debootstrap.
set -euo pipefail

BASE_IMAGE=${BASE_IMAGE:-debian:bookworm-slim}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
log() { printf 'docker-setup: %s\n' "$*" >&2; }

need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need_pkgs+=(debootstrap)
# compose: v2 plugin when Debian has it, else v1; either works with our Makefile.
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
  need_pkgs+=(docker-compose)
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

if ! timeout 5 docker info >/dev/null 2>&1; then
  log "starting dockerd"
  mkdir -p /var/log
  nohup dockerd >/var/log/dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    timeout 5 docker info >/dev/null 2>&1 && break
    sleep 1
  done
  timeout 5 docker info >/dev/null 2>&1 || { log "dockerd did not start; see /var/log/dockerd.log"; exit 1; }
fi

if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  if timeout 60 docker pull "$BASE_IMAGE" >/dev/null 2>&1; then
    log "pulled $BASE_IMAGE"
  else
    log "no registry: building $BASE_IMAGE with debootstrap from $MIRROR"
    root=$(mktemp -d /tmp/bookworm-root.XXXXXX)
    trap 'rm -rf "$root"' EXIT
    debootstrap --variant=minbase bookworm "$root" "$MIRROR" >/dev/null
    echo "deb $MIRROR bookworm main" >"$root/etc/apt/sources.list"
    echo "deb $MIRROR bookworm-updates main" >>"$root/etc/apt/sources.list"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | docker import - "$BASE_IMAGE" >/dev/null
    log "imported $BASE_IMAGE"
  fi
fi
log "ready: $(docker version --format '{{.Server.Version}}') with $BASE_IMAGE"
