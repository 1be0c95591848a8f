# syntax=docker/dockerfile:1.7
# One image for every role: `coffer api`, `coffer outbox-publisher`, `coffer reconciler`,
# `coffer chain-listener`, `coffer operator`.

FROM rust:1-bookworm AS builder
WORKDIR /src
# The commit shown by the coffer_build_info metric: docker build --build-arg COFFER_GIT_COMMIT=$(git rev-parse HEAD)
ARG COFFER_GIT_COMMIT=unknown
ENV COFFER_GIT_COMMIT=${COFFER_GIT_COMMIT}
COPY . .
# Cache mounts keep the registry and the build directory between builds; the binary is copied
# out of the cached target directory because cache mounts do not end up in the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p coffer \
    && install -D -m 0755 target/release/coffer /out/coffer

# glibc + libgcc, no shell, no package manager; runs as uid 65532 ("nonroot").
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/coffer /usr/local/bin/coffer
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/coffer"]
