//! The dead-letter console on inventory's gRPC port: a refused command is
//! listed and shown with its fields, behind the bearer token.

use std::path::PathBuf;

use contracts::{Routed, inventory::v1::ReserveInventory};
use inbox::admin::v1::{
    DeadLetterFilter, GetDeadLetterRequest, ListDeadLettersRequest, dead_letter_service_client::DeadLetterServiceClient,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tonic::{Code, Request};
use uuid::Uuid;

use crate::helpers::*;

const TOKEN: &str = "inventory-console-token-1c9e";

/// A file holding the token, removed when dropped.
struct TokenFile(PathBuf);

impl Drop for TokenFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn with_token<T>(body: T) -> Request<T> {
    let mut request = Request::new(body);
    request.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    request
}

#[sqlx::test(migrations = false)]
async fn a_refused_command_is_shown_by_the_console_with_its_fields(_: PgPoolOptions, db: PgConnectOptions) {
    let token_file = TokenFile(std::env::temp_dir().join(format!("{}.token", testkit::unique("inventory-console"))));
    std::fs::write(&token_file.0, format!("{TOKEN}\n")).unwrap();
    let mut config = test_config(&db);
    config.admin_token_file = Some(token_file.0.clone());
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let broker = Broker::connect(&topology).await;
    let app = spawn_app(config).await;
    let command = reserve(Uuid::new_v4(), vec![line("ABC-1", 0)], "corr-console");
    broker.reserve(&command).await;

    let mut client = DeadLetterServiceClient::connect(format!("http://{}", app.addr)).await.unwrap();
    let list =
        ListDeadLettersRequest { filter: Some(DeadLetterFilter::default()), page_size: 10, ..Default::default() };
    let refused = client.list_dead_letters(Request::new(list.clone())).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let mut listed = Vec::new();
    let client_ref = &mut client;
    for _ in 0..250 {
        listed = client_ref.list_dead_letters(with_token(list.clone())).await.unwrap().into_inner().dead_letters;
        if !listed.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(listed.len(), 1, "{listed:?}");
    let dead = &listed[0];
    assert_eq!(
        (dead.reason.as_str(), dead.message_type.as_str()),
        ("validation_failed", ReserveInventory::MESSAGE_TYPE)
    );
    assert_eq!((dead.message_id.as_str(), dead.correlation_id.as_str()), (command.event_id.as_str(), "corr-console"));
    let shown = client.get_dead_letter(with_token(GetDeadLetterRequest { id: dead.id.clone() })).await.unwrap();
    let payload: serde_json::Value = serde_json::from_str(&shown.into_inner().payload_json).unwrap();
    assert_eq!(payload["order_id"], command.order_id);
    assert_eq!(payload["lines"], serde_json::json!([{ "sku": "ABC-1", "quantity": 0 }]));
    app.stop().await;
    broker.delete(&topology).await;
}
