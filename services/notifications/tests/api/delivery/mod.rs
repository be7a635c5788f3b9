//! Delivery channels: `DeliveryService` calls, and deliveries sent by the
//! dispatcher to real receivers (an HTTP server and an SMTP server on
//! 127.0.0.1), with signatures checked by the `standardwebhooks` package.

mod connection;
mod email;
mod rpc;
mod support;
mod wake;
mod webhook;
