#!/bin/sh
# Lays out the files of the container image under DIR: the static relay,
# the CA bundle its HTTPS clients (ACME, FCM) check servers against, the
# nonroot user (uid 65532, as in distroless), the home and certificate
# cache directories. The Dockerfile's build stage runs it; so does an
# offline build from a binary built on the host (docs/DEPLOY.md).
#
#   deploy/stage-image.sh DIR [BINARY]
#
# BINARY defaults to the static dist build:
#   RUSTFLAGS="-C target-feature=+crt-static" \
#     cargo build --locked --profile dist --target x86_64-unknown-linux-gnu
set -eu
out=${1:?usage: deploy/stage-image.sh DIR [BINARY]}
binary=${2:-target/x86_64-unknown-linux-gnu/dist/pyrycode-relay}
ca_bundle=/etc/ssl/certs/ca-certificates.crt

if ! file "$binary" 2>/dev/null | grep -q 'static'; then
  # `file` may be missing: fall back to asking the dynamic loader.
  if ldd "$binary" 2>/dev/null | grep -q '=>'; then
    echo "stage-image: $binary is dynamically linked; the image has no libc" >&2
    exit 1
  fi
fi
rm -rf "$out"
mkdir -p "$out/etc/ssl/certs" "$out/home/nonroot" "$out/var/lib/relay/autocert"
install -m 0755 "$binary" "$out/pyrycode-relay"
install -m 0644 "$ca_bundle" "$out/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
  > "$out/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$out/etc/group"
chmod 0644 "$out/etc/passwd" "$out/etc/group"
