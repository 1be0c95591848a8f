//! Database spans (issue 8), with the OpenTelemetry database attributes and never a command's or
//! reply's documents (they hold user data):
//!
//! - the span of a multi-document transaction, and operation spans the write path opens around
//!   the steps a trace needs (the outbox insert, the commit): static strings, nearly free;
//! - optionally ([`crate::StoreConfig::command_spans`]) a span per MongoDB command, from the
//!   driver's command events. Those cost: the driver then decodes every command and reply into a
//!   `Document` (measured: about a fifth more CPU per transfer), so they are off by default.
//!   They are created only inside another span: background polls make no traces.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mongodb::bson::{Bson, Document};
use mongodb::event::command::CommandEvent;
use tracing::field::Empty;
use tracing::Span;

/// Most command spans open at once; beyond it new commands are not traced.
const MAX_OPEN: usize = 4096;
/// A command without a completion event after this long was abandoned (its future dropped).
const ABANDONED_AFTER: Duration = Duration::from_secs(60);

/// The open command spans, by the driver's request id.
#[derive(Default)]
pub(crate) struct CommandSpans {
    open: Mutex<HashMap<i32, (Instant, Span)>>,
}

impl CommandSpans {
    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<i32, (Instant, Span)>> {
        self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn on_event(&self, event: CommandEvent) {
        match event {
            CommandEvent::Started(started) => {
                // The driver emits the event in the task that runs the command, so the current
                // span is the operation's; none means nothing asked for a trace.
                if Span::current().is_none() {
                    return;
                }
                let span = command_span(&started.command_name, &started.db, &started.command);
                let mut open = self.open();
                if open.len() >= MAX_OPEN {
                    open.retain(|_, (at, _)| at.elapsed() < ABANDONED_AFTER);
                }
                if open.len() < MAX_OPEN {
                    open.insert(started.request_id, (Instant::now(), span));
                }
            }
            CommandEvent::Succeeded(succeeded) => {
                // Dropping the span ends it.
                let _ = self.open().remove(&succeeded.request_id);
            }
            CommandEvent::Failed(failed) => {
                let Some((_, span)) = self.open().remove(&failed.request_id) else {
                    return;
                };
                let (error_type, code) = error_type(&failed.failure);
                span.record("otel.status_code", "ERROR");
                span.record("error.type", error_type);
                if let Some(code) = code {
                    span.record("db.response.status_code", code.to_string().as_str());
                }
            }
            _ => {}
        }
    }
}

/// A low-cardinality name of a driver error, and the server's error code when it sent one.
fn error_type(error: &mongodb::error::Error) -> (&'static str, Option<i32>) {
    use mongodb::error::{ErrorKind, WriteFailure};
    match error.kind.as_ref() {
        ErrorKind::Command(e) => ("command", Some(e.code)),
        ErrorKind::Write(WriteFailure::WriteError(e)) => ("write", Some(e.code)),
        ErrorKind::Write(WriteFailure::WriteConcernError(e)) => ("write_concern", Some(e.code)),
        ErrorKind::InsertMany(_) | ErrorKind::BulkWrite(_) => ("write", None),
        ErrorKind::Io(_) => ("io", None),
        ErrorKind::ServerSelection { .. } => ("server_selection", None),
        ErrorKind::ConnectionPoolCleared { .. } => ("connection_pool_cleared", None),
        ErrorKind::Authentication { .. } => ("authentication", None),
        ErrorKind::Transaction { .. } => ("transaction", None),
        _ => ("other", None),
    }
}

/// `{command} {collection}` with the database attributes; the collection is the value of the
/// command's first key when it names one (`{insert: "outbox", …}`).
fn command_span(command_name: &str, database: &str, command: &Document) -> Span {
    let collection = match command.iter().next() {
        Some((_, Bson::String(name))) => Some(name.as_str()),
        _ => None,
    };
    let name = match collection {
        Some(collection) => format!("{command_name} {collection}"),
        None => command_name.to_string(),
    };
    let span = tracing::info_span!(
        "db",
        otel.name = name.as_str(),
        otel.kind = "client",
        otel.status_code = Empty,
        db.system = "mongodb",
        db.system.name = "mongodb",
        db.namespace = database,
        db.collection.name = Empty,
        db.operation.name = command_name,
        db.response.status_code = Empty,
        error.type = Empty,
    );
    if let Some(collection) = collection {
        span.record("db.collection.name", collection);
    }
    span
}

/// The span of one operation the code names itself (`insert outbox`, `commitTransaction`).
pub(crate) fn operation_span(
    operation: &'static str,
    database: &str,
    collection: Option<&'static str>,
) -> Span {
    let span = tracing::info_span!(
        "db",
        otel.name = Empty,
        otel.kind = "client",
        db.system = "mongodb",
        db.system.name = "mongodb",
        db.namespace = database,
        db.collection.name = collection,
        db.operation.name = operation,
    );
    match collection {
        Some(collection) => span.record("otel.name", format!("{operation} {collection}").as_str()),
        None => span.record("otel.name", operation),
    };
    span
}

/// The span of one multi-document transaction (all its attempts), named as the MongoDB
/// drivers' own instrumentation names it.
pub(crate) fn transaction_span(database: &str) -> Span {
    tracing::info_span!(
        "transaction",
        otel.kind = "client",
        otel.status_code = Empty,
        db.system = "mongodb",
        db.system.name = "mongodb",
        db.namespace = database,
        error.type = Empty,
    )
}

/// A movement's span in its request's trace: from its submission to its batch's commit. The
/// movement's outbox rows carry its context; its batch's span links to it.
pub(crate) fn movement_span(database: &str) -> Span {
    tracing::info_span!(
        "ledger.apply",
        otel.kind = "internal",
        otel.status_code = Empty,
        db.system = "mongodb",
        db.system.name = "mongodb",
        db.namespace = database,
        error.type = Empty,
    )
}

/// The span of one group-commit batch: a root span (it serves many requests, each linked), the
/// transaction of `movements` movements.
pub(crate) fn batch_span(database: &str, movements: usize, traceparents: &[&str]) -> Span {
    let span = tracing::info_span!(
        parent: None,
        "transaction",
        otel.kind = "client",
        otel.status_code = Empty,
        db.system = "mongodb",
        db.system.name = "mongodb",
        db.namespace = database,
        coffer.batch.movements = movements as u64,
        error.type = Empty,
    );
    for traceparent in traceparents {
        coffer_telemetry::propagation::link_to_traceparent(&span, traceparent);
    }
    span
}

/// Marks a transaction span failed when the failure is the database's, not a refusal of the
/// movement (insufficient funds, a duplicate ledger key: answers, not errors).
pub(crate) fn record_outcome<T>(span: &Span, result: &Result<T, crate::StoreError>) {
    use crate::StoreError;
    let error_type = match result {
        Err(StoreError::Database(e)) => error_type(&e.0).0,
        Err(StoreError::Contention) => "contention",
        Err(StoreError::Corrupt(_)) => "corrupt",
        _ => return,
    };
    span.record("otel.status_code", "ERROR");
    span.record("error.type", error_type);
}
