# The operator image (the default target) and the DPS emulator image (`--target emulator`).
#   docker build -t dps-operator .
#   docker build --target emulator -t dps-emulator .
#
# Dynamically linked against glibc, on distroless `cc` (glibc, libgcc, CA certificates, user
# nonroot 65532): a static musl build needs the musl target, which cannot be installed where this
# Dockerfile is tested, and a static glibc binary cannot load NSS modules, so host names would
# resolve only through the few built in. The operator calls DPS over HTTPS with rustls and the CA
# certificates from the image.
#
# The base images are build arguments so the same Dockerfile builds against stand-ins with the
# same layout where registries cannot be reached (scripts/build-images does that for the tests).
ARG BUILDER_IMAGE=docker.io/library/rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${BUILDER_IMAGE} AS build-emulator
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p dps-emulator --bin dps-emulator \
 && cp target/release/dps-emulator /

FROM ${BUILDER_IMAGE} AS build-operator
WORKDIR /src
COPY . .
# Without the `local` feature (`dps-operator local`, the emulator and test tooling): the
# operator image holds the operator and nothing else.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --no-default-features --bin dps-operator \
 && cp target/release/dps-operator /

FROM ${RUNTIME_IMAGE} AS emulator
COPY --from=build-emulator /dps-emulator /usr/local/bin/dps-emulator
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["/usr/local/bin/dps-emulator"]
CMD ["--listen", "0.0.0.0:8443", "--ca-out", "/tmp/dps-emulator-ca.pem"]

FROM ${RUNTIME_IMAGE} AS operator
COPY --from=build-operator /dps-operator /usr/local/bin/dps-operator
USER 65532:65532
# /livez, /readyz and /metrics (--metrics-address; the chart's metrics.port).
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/dps-operator"]
CMD ["run"]
