# syntax=docker/dockerfile:1
#
# pyrycode-relay: a static binary in an empty image, run as uid 65532
# (like the Go relay's distroless/static:nonroot image). docs/DEPLOY.md.
#
#   docker build -t pyrycode-relay .
#
# Offline, from a static binary built on the host (no base image to pull):
#
#   RUSTFLAGS="-C target-feature=+crt-static" \
#     cargo build --locked --profile dist --target x86_64-unknown-linux-gnu
#   deploy/stage-image.sh target/image
#   docker build --build-arg FILES_FROM=prebuilt -t pyrycode-relay .

# Where the image's files come from: `build` (compile here) or `prebuilt`
# (target/image, laid out by deploy/stage-image.sh on the host).
ARG FILES_FROM=build

# Tracks the toolchain the project is tested with. Pin it by digest in
# your own builds (rust:1.95-bookworm@sha256:…).
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# glibc, linked statically: the image has no libc to link against.
# The dist profile strips symbols and optimizes across crates.
RUN RUSTFLAGS="-C target-feature=+crt-static" \
      cargo build --locked --profile dist --target x86_64-unknown-linux-gnu -p pyrycode-relay \
 && deploy/stage-image.sh /out target/x86_64-unknown-linux-gnu/dist/pyrycode-relay

FROM scratch AS prebuilt
COPY target/image/ /out/

FROM ${FILES_FROM} AS files

FROM scratch
COPY --from=files /out/pyrycode-relay /pyrycode-relay
COPY --from=files /out/etc/ /etc/
COPY --from=files --chown=65532:65532 /out/home/nonroot/ /home/nonroot/
COPY --from=files --chown=65532:65532 /out/var/lib/relay/ /var/lib/relay/
USER 65532:65532
ENV HOME=/home/nonroot
# The ACME account and certificates (--cert-cache /var/lib/relay/autocert).
VOLUME ["/var/lib/relay/autocert"]
# 80: ACME HTTP-01; 443: WebSocket over TLS. Behind a TLS terminator or a
# platform that forwards to high ports, the relay listens where its flags say.
EXPOSE 80 443
ENTRYPOINT ["/pyrycode-relay"]
