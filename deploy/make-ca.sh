#!/usr/bin/env bash
# The CA a fleet shares: mitmproxy-ca.pem (key + certificate, for the proxies) and
# mitmproxy-ca-cert.pem (the certificate alone, for crawlers to trust), made by mitmproxy itself.
#   deploy/make-ca.sh DIR      (needs the package installed: pip install -e .)
set -euo pipefail
dir="${1:?usage: make-ca.sh DIR}"
mkdir -p "$dir"
python3 -c 'import sys; from pathlib import Path; from mitmproxy import certs; certs.CertStore.from_store(Path(sys.argv[1]), "mitmproxy", 2048)' "$dir"
chmod 600 "$dir/mitmproxy-ca.pem"
ls "$dir"
