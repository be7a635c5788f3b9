# syntax=docker/dockerfile:1
# One Dockerfile for every service; pick one with --target:
#   docker build --target orders -t pulse-orders .
#   docker build --target notifications -t pulse-notifications .
#   docker build --target payments -t pulse-payments .
#   docker build --target inventory -t pulse-inventory .
# (docker compose up --build builds all four.)

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
# OCI annotations of every image (org.opencontainers.image.*): a release build
# passes the commit and the build time, e.g.
#   --build-arg REVISION="$(git rev-parse HEAD)" --build-arg CREATED="$(date -u +%FT%TZ)"
# VERSION follows the workspace version in Cargo.toml.
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown

# --- build the four binaries once; the cargo registry and target dir live in
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
    cargo build --release --locked -p orders -p notifications -p payments -p inventory \
    && install -D -m 0755 -t /out target/release/orders target/release/notifications \
        target/release/payments target/release/inventory

# --- runtime images: glibc + libgcc, no shell; 65532 is distroless's `nonroot` user ---
FROM ${RUNTIME_IMAGE} AS orders
ARG RUNTIME_IMAGE
ARG VERSION
ARG REVISION
ARG CREATED
LABEL org.opencontainers.image.title="pulse-orders" \
      org.opencontainers.image.description="Pulse orders: gRPC OrderService with a transactional outbox relayed to RabbitMQ" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="Pulse" \
      org.opencontainers.image.base.name="${RUNTIME_IMAGE}"
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
ARG RUNTIME_IMAGE
ARG VERSION
ARG REVISION
ARG CREATED
LABEL org.opencontainers.image.title="pulse-notifications" \
      org.opencontainers.image.description="Pulse notifications: idempotent RabbitMQ consumer of OrderCreated with gRPC NotificationService" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="Pulse" \
      org.opencontainers.image.base.name="${RUNTIME_IMAGE}"
COPY --from=builder /out/notifications /usr/local/bin/notifications
USER 65532:65532
ENV NOTIFICATIONS_GRPC_ADDR=0.0.0.0:50052 \
    NOTIFICATIONS_METRICS_ADDR=0.0.0.0:9465
EXPOSE 50052 9465
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/notifications", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/notifications"]

FROM ${RUNTIME_IMAGE} AS payments
ARG RUNTIME_IMAGE
ARG VERSION
ARG REVISION
ARG CREATED
LABEL org.opencontainers.image.title="pulse-payments" \
      org.opencontainers.image.description="Pulse payments: the order saga's payment step (customer credit, capture, refund) over an inbox and an outbox, with gRPC PaymentService" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="Pulse" \
      org.opencontainers.image.base.name="${RUNTIME_IMAGE}"
COPY --from=builder /out/payments /usr/local/bin/payments
USER 65532:65532
ENV PAYMENTS_GRPC_ADDR=0.0.0.0:50053 \
    PAYMENTS_METRICS_ADDR=0.0.0.0:9466
EXPOSE 50053 9466
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/payments", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/payments"]

FROM ${RUNTIME_IMAGE} AS inventory
ARG RUNTIME_IMAGE
ARG VERSION
ARG REVISION
ARG CREATED
LABEL org.opencontainers.image.title="pulse-inventory" \
      org.opencontainers.image.description="Pulse inventory: the order saga's stock reservation step over an inbox and an outbox, with gRPC InventoryService" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="Pulse" \
      org.opencontainers.image.base.name="${RUNTIME_IMAGE}"
COPY --from=builder /out/inventory /usr/local/bin/inventory
USER 65532:65532
ENV INVENTORY_GRPC_ADDR=0.0.0.0:50054 \
    INVENTORY_METRICS_ADDR=0.0.0.0:9467
EXPOSE 50054 9467
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/inventory", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/inventory"]
