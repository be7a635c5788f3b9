//! Shared by the end-to-end tests: a scratch vhost and databases, the
//! services as processes, and the client, database and broker views.

pub(crate) mod api;
pub(crate) mod broker;
pub(crate) mod cluster;
pub(crate) mod db;
pub(crate) mod postgres;
pub(crate) mod process;
pub(crate) mod rabbitmq;
pub(crate) mod saga;
pub(crate) mod scratch;

use process::{Service, Spec};
use scratch::Scratch;

/// Both services running against one test's own vhost and databases.
/// Fields drop in order: the processes are killed before the scratch space goes.
pub(crate) struct System {
    pub(crate) notifications: Service,
    pub(crate) orders: Service,
    pub(crate) scratch: Scratch,
}

/// The four services of the order saga against one test's vhost and databases.
/// Fields drop in order: the processes are killed before the scratch space goes.
pub(crate) struct SagaSystem {
    pub(crate) orders: Service,
    pub(crate) payments: Service,
    pub(crate) inventory: Service,
    pub(crate) notifications: Service,
    pub(crate) scratch: Scratch,
}

impl SagaSystem {
    /// The consumers first (each declares its queue), then orders; `orders`
    /// adjusts the orders process (a short step timeout, say).
    pub(crate) async fn start(orders: impl FnOnce(Spec) -> Spec) -> Self {
        Self::start_with(|spec| spec, orders).await
    }

    /// [`Self::start`], with `every` adjusting all four processes first.
    pub(crate) async fn start_with(every: impl Fn(Spec) -> Spec, orders: impl FnOnce(Spec) -> Spec) -> Self {
        let scratch = Scratch::new().await;
        let notifications = every(Spec::notifications(&scratch)).start().await;
        let payments = every(Spec::payments(&scratch)).start().await;
        let inventory = every(Spec::inventory(&scratch)).start().await;
        let orders = orders(every(Spec::orders(&scratch)).env("SAGA_ENABLED", "true")).start().await;
        Self { orders, payments, inventory, notifications, scratch }
    }
}

impl System {
    /// Notifications first (its consumer declares the queue), then orders with its relay.
    pub(crate) async fn start() -> Self {
        Self::start_with(|spec| spec).await
    }

    /// [`Self::start`], with `notifications` adjusting the notifications process.
    pub(crate) async fn start_with(notifications: impl FnOnce(Spec) -> Spec) -> Self {
        let scratch = Scratch::new().await;
        let notifications = notifications(Spec::notifications(&scratch)).start().await;
        let orders = Spec::orders(&scratch).start().await;
        Self { notifications, orders, scratch }
    }
}

/// Notifications delivering webhooks to receivers on this machine: a secrets
/// key, private networks allowed, a short timeout and retry schedule.
pub(crate) fn delivering(spec: Spec) -> Spec {
    spec.env("DELIVERY_SECRET_KEY", "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=")
        .env("DELIVERY_ALLOW_PRIVATE_NETWORKS", "true")
        .env("DELIVERY_TIMEOUT", "2s")
        .env("DELIVERY_RETRY_SCHEDULE", "200ms,500ms,1s,2s,2s,2s,2s,2s")
}
