# The operator image: a static (musl) binary on distroless, which carries CA certificates (the
# operator calls Azure over HTTPS), running as a non-root user.
# Built without the `local` feature (`dps-operator local`, the emulator and test tooling): the
# image holds the operator and nothing else.
#   docker build -t dps-operator .
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools && rm -rf /var/lib/apt/lists/*
RUN rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --no-default-features --target x86_64-unknown-linux-musl --bin dps-operator \
 && cp target/x86_64-unknown-linux-musl/release/dps-operator /dps-operator

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /dps-operator /usr/local/bin/dps-operator
USER 65532:65532
# /livez, /readyz and /metrics (--metrics-address; the chart's metrics.port).
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/dps-operator"]
CMD ["run"]
