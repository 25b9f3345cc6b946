#!/usr/bin/env bash
# Makes throwaway certificates for the TLS tests in DIR: a CA (ca.crt), a
# server certificate it signed for localhost and 127.0.0.1 (server.crt,
# server.key), a client certificate it signed (client.crt, client.key), and a
# second, unrelated CA (other-ca.crt) that verifies none of them.
#
#   tls_certs.sh DIR
set -euo pipefail
dir=$1
mkdir -p "$dir"
cd "$dir"
days=3
ca() {  # ca NAME SUBJECT
  openssl req -x509 -newkey rsa:2048 -nodes -days "$days" -subj "$2" -keyout "$1.key" -out "$1.crt" 2>/dev/null
}
signed() {  # signed NAME SUBJECT EXTENSIONS
  openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
  printf '%s\n' "$3" >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" -extfile "$1.ext" \
    -out "$1.crt" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
ca ca "/CN=cacheflight test CA"
ca other-ca "/CN=another CA"
signed server "/CN=localhost" "subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth"
signed client "/CN=cacheflight test client" "extendedKeyUsage=clientAuth"
chmod 644 ./*.key
