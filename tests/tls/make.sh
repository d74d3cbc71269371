#!/usr/bin/env bash
# Test-only certificates for tests/test_webhooks_connections.py: a throwaway authority and two
# server certificates it signed, for `localhost` and for `hooks.example`, valid for 100 years.
# The keys protect nothing: they exist so TLS can be tested without a package that makes
# certificates at run time (trustme brings `cryptography`, which redis-py's PyJWT then imports
# into every taskd process of the dev venv: 6 MiB more idle memory in `make bench`).
# Made once with `bash tests/tls/make.sh`; run it again to replace them.
set -euo pipefail
cd "$(dirname "$0")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
openssl req -x509 "${ec[@]}" -keyout "$work/ca.key" -out ca.pem -days 36500 -subj "/CN=taskd test authority" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
for name in localhost hooks.example; do
    openssl req "${ec[@]}" -keyout "$work/$name.key" -out "$work/$name.csr" -subj "/CN=$name"
    printf 'subjectAltName=DNS:%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' "$name" >"$work/$name.ext"
    openssl x509 -req -in "$work/$name.csr" -CA ca.pem -CAkey "$work/ca.key" -CAserial "$work/ca.srl" -CAcreateserial \
        -out "$work/$name.crt" -days 36500 -extfile "$work/$name.ext"
    cat "$work/$name.crt" "$work/$name.key" >"$name.pem"
done
