//! End-to-end tests of Pulse, in `tests/e2e/`: they run the real `orders` and
//! `notifications` binaries (built by `cargo build --workspace --bins`, which
//! `build-support/scripts/test.sh` does first) as child processes, each test
//! with its own databases and its own RabbitMQ virtual host, and check what
//! a client, the databases and the broker see. This library is empty.
