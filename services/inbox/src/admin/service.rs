//! `pulse.admin.v1.DeadLetterService` over the `dead_letters` table, and the
//! bearer-token check in front of it.

use std::marker::PhantomData;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use sqlx::PgPool;
use tonic::{Request, Response, Status, service::interceptor::InterceptedService};
use uuid::Uuid;

use super::{
    auth::BearerAuth,
    broker::{self, ConsoleChannel},
    store::{self, Cursor, DeadLetterRow, Filter, State},
    v1::{self, dead_letter_service_server::DeadLetterServiceServer},
};
use crate::{Handler, InboxConfig, topology::Topology};

const DEFAULT_PAGE_SIZE: i32 = 50;
const MAX_PAGE_SIZE: i32 = 1000;
/// Most dead letters one replay or purge by filter moves.
const DEFAULT_LIMIT: i32 = 1000;

/// The console of one inbox: its pool, its broker and its queues. `H` decodes
/// the payloads [`v1::GetDeadLetterResponse`] shows.
pub struct DeadLetterConsole<H> {
    pool: PgPool,
    amqp_url: SecretString,
    topology: Topology,
    handler: PhantomData<fn() -> H>,
}

impl<H: Handler> DeadLetterConsole<H> {
    pub fn new(pool: PgPool, config: &InboxConfig) -> Self {
        Self { pool, amqp_url: config.amqp_url.clone(), topology: config.topology(), handler: PhantomData }
    }

    /// The gRPC service, every call checked against `token` (see [`BearerAuth`]).
    pub fn into_service(
        self,
        token: Option<SecretString>,
    ) -> InterceptedService<DeadLetterServiceServer<Self>, BearerAuth> {
        self.into_service_with(BearerAuth::new(token))
    }

    /// The gRPC service, every call checked by `auth`.
    pub fn into_service_with(self, auth: BearerAuth) -> InterceptedService<DeadLetterServiceServer<Self>, BearerAuth> {
        let server = DeadLetterServiceServer::new(self).max_decoding_message_size(1024 * 1024);
        InterceptedService::new(server, auth)
    }

    /// Takes the dead-letter queue into the table. The table stays readable
    /// while the broker is not: the failure is logged and the call goes on.
    async fn ingest(&self) {
        match ConsoleChannel::open(&self.amqp_url, &self.topology).await {
            Ok(console) => {
                if let Err(err) = broker::ingest(&self.pool, &console.channel, &self.topology).await {
                    tracing::warn!(error = format!("{err:#}"), "cannot take the dead-letter queue into the console");
                }
                console.close().await;
            }
            Err(err) => tracing::warn!(error = format!("{err:#}"), "cannot reach the broker for the dead-letter queue"),
        }
    }

    fn describe(&self, row: &DeadLetterRow) -> Result<String, String> {
        if !H::MESSAGE_TYPES.contains(&row.message_type.as_str()) {
            let expected = H::MESSAGE_TYPES.join(" or ");
            return Err(format!("message type {:?} is not {expected}", row.message_type));
        }
        let event = H::decode(&row.message_type, &row.payload).map_err(|err| format!("cannot decode: {err}"))?;
        serde_json::to_string_pretty(&H::describe(&event)).map_err(|err| err.to_string())
    }

    async fn replay_one(&self, console: &ConsoleChannel, id: Uuid) -> Result<bool, Status> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let Some(row) = store::lock_waiting(&mut tx, id).await.map_err(db)? else { return Ok(false) };
        broker::republish(&console.channel, &self.topology, &row)
            .await
            .map_err(|err| Status::unavailable(format!("replay of {id} not confirmed: {err:#}")))?;
        store::mark_replayed(&mut tx, id).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(true)
    }
}

#[tonic::async_trait]
impl<H: Handler> v1::dead_letter_service_server::DeadLetterService for DeadLetterConsole<H> {
    async fn list_dead_letters(
        &self,
        request: Request<v1::ListDeadLettersRequest>,
    ) -> Result<Response<v1::ListDeadLettersResponse>, Status> {
        let request = request.into_inner();
        let filter = filter(request.filter)?;
        let size = match request.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if (1..=MAX_PAGE_SIZE).contains(&n) => n,
            n => return Err(Status::invalid_argument(format!("page_size must be 1 to {MAX_PAGE_SIZE}, got {n}"))),
        };
        let after = match request.page_token.as_str() {
            "" => None,
            token => Some(Cursor::decode(token).ok_or_else(|| Status::invalid_argument("page_token is not ours"))?),
        };
        self.ingest().await;
        // One more than the page tells whether there is a next page.
        let mut rows = store::list(&self.pool, &filter, after, i64::from(size) + 1).await.map_err(db)?;
        let next_page_token = if rows.len() > size as usize {
            rows.truncate(size as usize);
            rows.last().map(|r| Cursor { at: r.dead_lettered_at, id: r.id }.encode()).unwrap_or_default()
        } else {
            String::new()
        };
        let dead_letters = rows.iter().map(to_proto).collect();
        Ok(Response::new(v1::ListDeadLettersResponse { dead_letters, next_page_token }))
    }

    async fn get_dead_letter_groups(
        &self,
        request: Request<v1::GetDeadLetterGroupsRequest>,
    ) -> Result<Response<v1::GetDeadLetterGroupsResponse>, Status> {
        let filter = filter(request.into_inner().filter)?;
        self.ingest().await;
        let groups = store::groups(&self.pool, &filter).await.map_err(db)?;
        let groups = groups
            .into_iter()
            .map(|g| v1::DeadLetterGroup {
                reason: g.reason,
                message_type: g.message_type,
                count: g.count.max(0) as u64,
                oldest: Some(timestamp(g.oldest)),
                newest: Some(timestamp(g.newest)),
            })
            .collect();
        Ok(Response::new(v1::GetDeadLetterGroupsResponse { groups }))
    }

    async fn get_dead_letter(
        &self,
        request: Request<v1::GetDeadLetterRequest>,
    ) -> Result<Response<v1::GetDeadLetterResponse>, Status> {
        let id = parse_id(&request.into_inner().id)?;
        self.ingest().await;
        let row = store::get(&self.pool, id).await.map_err(db)?;
        let row = row.ok_or_else(|| Status::not_found(format!("no dead letter {id}")))?;
        let history = store::history(&self.pool, id).await.map_err(db)?;
        let (payload_json, decode_error) = match self.describe(&row) {
            Ok(json) => (json, String::new()),
            Err(err) => (String::new(), err),
        };
        let headers = row
            .headers
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
            .collect();
        Ok(Response::new(v1::GetDeadLetterResponse {
            dead_letter: Some(to_proto(&row)),
            headers,
            payload_json,
            decode_error,
            payload: row.payload.clone(),
            history: history
                .iter()
                .map(|r| v1::Attempt {
                    dead_letter_id: r.id.to_string(),
                    reason: r.reason.clone(),
                    error: r.error.clone(),
                    attempts: r.attempts.max(0) as u32,
                    dead_lettered_at: Some(timestamp(r.dead_lettered_at)),
                })
                .collect(),
        }))
    }

    async fn replay_dead_letters(
        &self,
        request: Request<v1::ReplayDeadLettersRequest>,
    ) -> Result<Response<v1::ReplayDeadLettersResponse>, Status> {
        let request = request.into_inner();
        let (ids, filter, limit) = selection(&request.ids, request.filter, request.limit)?;
        self.ingest().await;
        let chosen = store::select(&self.pool, &ids, &filter, limit).await.map_err(db)?;
        if request.dry_run {
            let ids = chosen.iter().map(Uuid::to_string).collect();
            return Ok(Response::new(v1::ReplayDeadLettersResponse { ids, dry_run: true }));
        }
        let console = ConsoleChannel::open(&self.amqp_url, &self.topology)
            .await
            .map_err(|err| Status::unavailable(format!("cannot reach the broker: {err:#}")))?;
        let mut replayed = Vec::new();
        for id in chosen {
            match self.replay_one(&console, id).await {
                Ok(true) => replayed.push(id.to_string()),
                Ok(false) => {}
                Err(status) => {
                    console.close().await;
                    return Err(status);
                }
            }
        }
        console.close().await;
        tracing::info!(replayed = replayed.len(), to = %self.topology.main, "replayed dead letters");
        Ok(Response::new(v1::ReplayDeadLettersResponse { ids: replayed, dry_run: false }))
    }

    async fn purge_dead_letters(
        &self,
        request: Request<v1::PurgeDeadLettersRequest>,
    ) -> Result<Response<v1::PurgeDeadLettersResponse>, Status> {
        let request = request.into_inner();
        if request.by.trim().is_empty() {
            return Err(Status::invalid_argument("by must name who purges"));
        }
        let (ids, filter, limit) = selection(&request.ids, request.filter, request.limit)?;
        self.ingest().await;
        let chosen = store::select(&self.pool, &ids, &filter, limit).await.map_err(db)?;
        let ids = if request.dry_run {
            chosen
        } else {
            store::purge(&self.pool, &chosen, request.by.trim(), request.reason.trim()).await.map_err(db)?
        };
        if !request.dry_run {
            tracing::info!(purged = ids.len(), by = %request.by.trim(), reason = %request.reason.trim(), "purged dead letters");
        }
        let ids = ids.iter().map(Uuid::to_string).collect();
        Ok(Response::new(v1::PurgeDeadLettersResponse { ids, dry_run: request.dry_run }))
    }
}

/// Ids when given, else the filter, with the row limit for a filter.
fn selection(
    ids: &[String],
    raw: Option<v1::DeadLetterFilter>,
    limit: i32,
) -> Result<(Vec<Uuid>, Filter, i64), Status> {
    let ids = ids.iter().map(|id| parse_id(id)).collect::<Result<Vec<_>, _>>()?;
    let limit = match limit {
        0 => DEFAULT_LIMIT,
        n if n > 0 => n,
        n => return Err(Status::invalid_argument(format!("limit must be positive, got {n}"))),
    };
    let filter = filter(raw)?;
    if filter.state != State::Dead {
        return Err(Status::invalid_argument("only waiting dead letters can be replayed or purged"));
    }
    Ok((ids, filter, i64::from(limit)))
}

fn filter(raw: Option<v1::DeadLetterFilter>) -> Result<Filter, Status> {
    let raw = raw.unwrap_or_default();
    let text = |s: String| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
    let state = match v1::DeadLetterState::try_from(raw.state) {
        Ok(v1::DeadLetterState::Unspecified | v1::DeadLetterState::Dead) => State::Dead,
        Ok(v1::DeadLetterState::Replayed) => State::Replayed,
        Ok(v1::DeadLetterState::Purged) => State::Purged,
        Err(_) => return Err(Status::invalid_argument(format!("unknown state {}", raw.state))),
    };
    Ok(Filter {
        reason: text(raw.reason),
        message_type: text(raw.message_type),
        since: raw.since.map(from_timestamp).transpose()?,
        until: raw.until.map(from_timestamp).transpose()?,
        correlation_id: text(raw.correlation_id),
        state,
    })
}

fn parse_id(raw: &str) -> Result<Uuid, Status> {
    Uuid::parse_str(raw.trim()).map_err(|_| Status::invalid_argument(format!("id must be a UUID, got {raw:?}")))
}

fn from_timestamp(t: prost_types::Timestamp) -> Result<DateTime<Utc>, Status> {
    DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)
        .ok_or_else(|| Status::invalid_argument("timestamp out of range"))
}

fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: at.timestamp(), nanos: at.timestamp_subsec_nanos() as i32 }
}

fn to_proto(row: &DeadLetterRow) -> v1::DeadLetter {
    let state = match State::parse(&row.state) {
        State::Dead => v1::DeadLetterState::Dead,
        State::Replayed => v1::DeadLetterState::Replayed,
        State::Purged => v1::DeadLetterState::Purged,
    };
    v1::DeadLetter {
        id: row.id.to_string(),
        message_id: row.message_id.clone(),
        message_type: row.message_type.clone(),
        correlation_id: row.correlation_id.clone(),
        reason: row.reason.clone(),
        error: row.error.clone(),
        attempts: row.attempts.max(0) as u32,
        source_queue: row.source_queue.clone(),
        dead_lettered_at: Some(timestamp(row.dead_lettered_at)),
        state: state.into(),
        replay_of: row.replay_of.map(|id| id.to_string()).unwrap_or_default(),
        replayed_at: row.replayed_at.map(timestamp),
        purged_at: row.purged_at.map(timestamp),
        purged_by: row.purged_by.clone().unwrap_or_default(),
        purge_reason: row.purge_reason.clone().unwrap_or_default(),
    }
}

/// A pool that timed out or lost its connection is worth retrying; anything else is ours.
fn db(err: sqlx::Error) -> Status {
    match err {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
            Status::unavailable("the database is unavailable")
        }
        err => {
            tracing::error!(error = %err, "dead-letter console query failed");
            Status::internal("dead-letter console query failed")
        }
    }
}
