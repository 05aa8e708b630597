#!/usr/bin/env bash
# SPEC scenario "simple-docker-compose", end to end: make ./tmp inputs, `up -d` the seeder and
# leecher of docker-compose.yml, wait (bounded) until tmp/data2.bin equals tmp/data1.bin, check
# that `diff` is silent, and always take the project down again (trap), also on failure/Ctrl-C.
#
#   scripts/compose-test.sh                   # docker compose v2 if present, else docker-compose v1
#   COMPOSE=docker-compose scripts/compose-test.sh
#   SIZE=4M PIECE=128K TIMEOUT_S=30 scripts/compose-test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

TIMEOUT_S=${TIMEOUT_S:-30}      # the SPEC's limit for this scenario
CALL_TIMEOUT_S=180              # one compose call (up with a cached build, down): bounded
SIZE=${SIZE:-1M}
PIECE=${PIECE:-64K}
PROJECT=${COMPOSE_PROJECT_NAME:-p2pcompose}

if [ -n "${COMPOSE:-}" ]; then
  read -ra compose <<<"$COMPOSE"
elif docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
else
  echo "compose-test: neither 'docker compose' nor 'docker-compose' is installed" >&2
  exit 2
fi

dc() { timeout "$CALL_TIMEOUT_S" "${compose[@]}" -p "$PROJECT" -f docker-compose.yml "$@"; }
down() { dc down -v --remove-orphans --timeout 2 >/dev/null 2>&1 || true; }
trap down EXIT
trap 'exit 130' INT TERM

python3 scripts/compose-files.py --size "$SIZE" --piece "$PIECE"
down   # leftovers of an interrupted earlier run
now_ms() { date +%s%3N; }
secs() { printf '%d.%02d' $(($1 / 1000)) $(($1 % 1000 / 10)); }
t0=$(now_ms)
if ! dc up -d --build >tmp/compose-up.log 2>&1; then
  echo "compose-test: FAIL: '${compose[*]} up' failed:" >&2
  cat tmp/compose-up.log >&2
  exit 1
fi
t_up=$(now_ms)

until cmp -s tmp/data1.bin tmp/data2.bin; do
  if (( $(now_ms) - t_up > TIMEOUT_S * 1000 )); then
    echo "compose-test: FAIL (${compose[*]}): tmp/data2.bin not equal to tmp/data1.bin after ${TIMEOUT_S}s" >&2
    dc ps >&2 || true
    dc logs --tail 40 >&2 || true
    exit 1
  fi
  sleep 0.1
done
t_done=$(now_ms)
echo "compose-test: synced in $(secs $((t_done - t_up)))s after up returned" \
  "($(secs $((t_done - t0)))s including up), ${compose[*]}"

if ! out=$(diff tmp/data1.bin tmp/data2.bin) || [ -n "$out" ]; then
  echo "compose-test: FAIL: diff is not silent: $out" >&2
  exit 1
fi
echo "compose-test: OK: diff tmp/data1.bin tmp/data2.bin is silent"
