//! What the outbox, the inbox and the services share below the service level:
//! configuration read from the environment (every problem reported at once,
//! secrets from files, unknown variables named), credentials masked in URLs,
//! connections to a RabbitMQ cluster's nodes, Postgres pool sizing and error
//! classification, a dedicated connection lane, retry backoff and arrival
//! rates. Nothing here knows Pulse's contracts or services.

pub mod amqp;
pub mod backoff;
pub mod config;
pub mod lane;
pub mod pg;
pub mod rate;
pub mod redact;
pub mod schema;
