# syntax=docker/dockerfile:1
# One Dockerfile for both services; pick one with --target:
#   docker build --target orders -t pulse-orders .
#   docker build --target notifications -t pulse-notifications .
# (docker compose up --build builds both.)

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# --- build both binaries once; the cargo registry and target dir live in
# BuildKit cache mounts, so a rebuild only recompiles what changed ---
FROM ${RUST_IMAGE} AS builder
WORKDIR /src
# Any sqlx query macro checks against .sqlx/ data, never a live database.
ENV SQLX_OFFLINE=true \
    CARGO_TERM_COLOR=never
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p orders -p notifications \
    && install -D -m 0755 -t /out target/release/orders target/release/notifications

# --- runtime images: glibc + libgcc, no shell; 65532 is distroless's `nonroot` user ---
FROM ${RUNTIME_IMAGE} AS orders
COPY --from=builder /out/orders /usr/local/bin/orders
USER 65532:65532
ENV ORDERS_GRPC_ADDR=0.0.0.0:50051 \
    ORDERS_METRICS_ADDR=0.0.0.0:9464
EXPOSE 50051 9464
# `orders healthcheck` asks the local gRPC health service; exit 0 when SERVING.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/orders", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/orders"]

FROM ${RUNTIME_IMAGE} AS notifications
COPY --from=builder /out/notifications /usr/local/bin/notifications
USER 65532:65532
ENV NOTIFICATIONS_GRPC_ADDR=0.0.0.0:50052 \
    NOTIFICATIONS_METRICS_ADDR=0.0.0.0:9465
EXPOSE 50052 9465
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/notifications", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/notifications"]
