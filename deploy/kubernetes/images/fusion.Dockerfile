# The `fusion` image: the server (StatefulSet `fusion`), and the fetcher sidecar
# of every function pod (`fusion fetcher`), from one binary at /usr/local/bin/fusion.
# Build from the repository's root:
#   docker build -f deploy/kubernetes/images/fusion.Dockerfile -t fusion/fusion:0.1.0 .

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The kubernetes feature compiles the cluster crate (kube-rs) into the binary.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --features kubernetes --bin fusion \
    && install -D -m 0755 target/release/fusion /out/fusion

FROM debian:bookworm-slim
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/fusion /usr/local/bin/fusion
# Non-root, as deploy/kubernetes/fusion.yaml runs it (runAsUser 65532).
USER 65532:65532
EXPOSE 8888 8889
ENTRYPOINT ["/usr/local/bin/fusion"]
CMD ["server"]
