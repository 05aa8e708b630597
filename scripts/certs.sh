#!/usr/bin/env bash
# A closed swarm's certificates, made with openssl: a CA (its key is the membership: keep it off the
# nodes), one certificate per node (node-0 .. node-N-1), and "member", one certificate that every
# replica of a scaled service can share. EC P-256 keys; TLS 1.3 is enforced by the node.
#   usage: scripts/certs.sh OUT_DIR [NODES]      (an existing CA in OUT_DIR is reused)
set -euo pipefail
out=${1:?usage: scripts/certs.sh OUT_DIR [NODES]}
nodes=${2:-0}
days=${CERT_DAYS:-825}
mkdir -p "$out"
umask 077
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

if [ ! -f "$out/ca.pem" ]; then
  key "$out/ca.key"
  openssl req -x509 -new -key "$out/ca.key" -out "$out/ca.pem" -days "$days" -subj "/CN=p2p-node swarm CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash"
fi
ext=$(mktemp)
trap 'rm -f "$ext" "$out"/*.csr' EXIT
printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
  "extendedKeyUsage=serverAuth,clientAuth" "subjectKeyIdentifier=hash" \
  "authorityKeyIdentifier=keyid,issuer" >"$ext"
issue() {
  key "$out/$1.key"
  openssl req -new -key "$out/$1.key" -out "$out/$1.csr" -subj "/CN=$1"
  openssl x509 -req -in "$out/$1.csr" -CA "$out/ca.pem" -CAkey "$out/ca.key" -CAcreateserial \
    -out "$out/$1.pem" -days "$days" -extfile "$ext" 2>/dev/null
}
issue member
for ((i = 0; i < nodes; i++)); do issue "node-$i"; done
chmod 644 "$out"/*.pem
echo "certs: CA and $((nodes + 1)) certificates in $out (ca.key stays with you, not on the nodes)"
