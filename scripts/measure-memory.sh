#!/usr/bin/env bash
# Peak memory of real nodes, as the Kubernetes manifests run them: the figures behind their
# resources (deploy/k8s/README.md). One seeder and N-1 leechers sync a SIZE file on an --internal
# network, each container as in the pod spec (non-root uid 10001, read-only root filesystem, no
# capabilities, HTTP on), then each node's VmHWM (peak RSS) is read from /proc/1/status and its
# /metrics scraped once. Everything it creates is named p2pmem-* and removed on exit.
#
#   IMAGE=p2p-node:http SIZE=1G N=3 scripts/measure-memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-p2p-node:latest}
SIZE=${SIZE:-256M}
PIECE=${PIECE:-256K}
N=${N:-3}
TIMEOUT_S=${TIMEOUT_S:-180}     # the whole sync; a 1 GiB file takes ~10-20 s on 2 cores
NET=p2pmem-net
DIR=$(mktemp -d /tmp/p2pmem.XXXXXX)

cleanup() {
  for i in $(seq 0 $((N - 1))); do docker rm -f "p2pmem-$i" >/dev/null 2>&1 || true; done
  docker network rm "$NET" >/dev/null 2>&1 || true
  rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cleanup_first() { docker rm -f $(docker ps -aq --filter name='^p2pmem-') >/dev/null 2>&1 || true; }
cleanup_first
docker network rm "$NET" >/dev/null 2>&1 || true
docker network create --internal --subnet 172.29.93.0/24 "$NET" >/dev/null

python3 - "$DIR" "$SIZE" "$PIECE" "$N" <<'EOF'
import hashlib, json, os, sys
d, size, piece, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
size = int(size[:-1]) * unit[size[-1]] if size[-1] in unit else int(size)
piece = int(piece[:-1]) * unit[piece[-1]] if piece[-1] in unit else int(piece)
parts = []
with open(os.path.join(d, "data0.bin"), "wb") as f:
    block = os.urandom(1 << 20)
    for off in range(0, size, piece):
        chunk = (block * (piece // len(block) + 1))[:min(piece, size - off)]
        chunk = off.to_bytes(8, "little") + chunk[8:]  # every piece different
        parts.append(hashlib.sha1(chunk).hexdigest())
        f.write(chunk)
peers = [f"172.29.93.{10 + i}" for i in range(n)]
json.dump({"Peers": peers, "FileInfo": {"Size": size, "PartSize": piece, "Parts": parts}},
          open(os.path.join(d, "torrent.conf"), "w"))
EOF
chown -R 10001:10001 "$DIR"

t0=$(date +%s)
for i in $(seq 0 $((N - 1))); do
  mkdir -p "$DIR/n$i" && chown 10001:10001 "$DIR/n$i"
  [ "$i" = 0 ] && mv "$DIR/data0.bin" "$DIR/n0/data.bin"
  docker run -d --name "p2pmem-$i" --network "$NET" --ip "172.29.93.$((10 + i))" \
    --user 10001:10001 --read-only --cap-drop ALL --security-opt no-new-privileges \
    -e NODE_DATA=/var/lib/p2p/data.bin -e NODE_CONF=/etc/p2p/torrent.conf -e NODE_HTTP_PORT=9881 \
    -e NODE_DISCOVERY=off -v "$DIR/n$i:/var/lib/p2p" -v "$DIR/torrent.conf:/etc/p2p/torrent.conf:ro" \
    "$IMAGE" >/dev/null
done
for i in $(seq 0 $((N - 1))); do
  until docker logs "p2pmem-$i" 2>&1 | grep -q "event=complete"; do
    (( $(date +%s) - t0 > TIMEOUT_S )) && { echo "measure-memory: p2pmem-$i not complete" >&2; docker logs --tail 20 "p2pmem-$i" >&2; exit 1; }
    sleep 0.5
  done
done
echo "measure-memory: $N nodes synced $SIZE (pieces $PIECE) in $(( $(date +%s) - t0 ))s, non-root, read-only root"
for i in $(seq 0 $((N - 1))); do
  hwm=$(docker exec "p2pmem-$i" grep VmHWM /proc/1/status | awk '{print $2}')
  rss=$(docker exec "p2pmem-$i" python3 -c "import urllib.request as u; print([l for l in u.urlopen('http://127.0.0.1:9881/metrics').read().decode().splitlines() if l.startswith(('process_resident_memory_bytes', 'process_cpu_seconds_total'))])")
  cg=$(docker exec "p2pmem-$i" sh -c 'cat /sys/fs/cgroup/memory.peak 2>/dev/null || cat /sys/fs/cgroup/memory/memory.max_usage_in_bytes 2>/dev/null || echo ?')
  echo "p2pmem-$i peak_rss_kib=$hwm now: $rss cgroup_peak_bytes=$cg"
done
