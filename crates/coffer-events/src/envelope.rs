//! The CloudEvents 1.0 envelope of an outbox row.
//!
//! On RabbitMQ it uses the AMQP binding's *binary* content mode: the body is the event's `data`
//! (`application/json`), the context attributes are `cloudEvents:`-prefixed headers, and
//! `message_id` is the event id (the outbox row id), so a consumer dedupes by either. Two Coffer
//! headers ride along for internal consumers: `coffer-user-id` (whose stream receives it) and the
//! W3C `traceparent` of the request that moved the money. On the WebSocket the same event is
//! structured JSON ([`CloudEvent`]) without any internal field.

use coffer_store::OutboxDoc;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use serde::{Deserialize, Serialize};

use crate::EventsError;

pub const SPEC_VERSION: &str = "1.0";
/// The `source` of every Coffer event.
pub const SOURCE: &str = "/coffer/ledger";
const PREFIX: &str = "cloudEvents:";
pub const USER_HEADER: &str = "coffer-user-id";
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// A product-safe CloudEvent, as sent on the WebSocket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent {
    pub specversion: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub time: String,
    /// The wallet the event is about (the ordering key).
    pub subject: String,
    /// `urn:coffer:schema:<type>:v<version>`: the version of `data`'s schema.
    pub dataschema: String,
    pub datacontenttype: String,
    pub data: serde_json::Value,
}

/// The schema URI of a type's `data` at `version`.
pub fn dataschema(event_type: &str, version: u32) -> String {
    format!("urn:coffer:schema:{event_type}:v{version}")
}

impl CloudEvent {
    /// The envelope of an outbox row; internal fields (user, lease, attempts) stay out.
    pub fn from_outbox(row: &OutboxDoc) -> CloudEvent {
        let time = row
            .created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        CloudEvent {
            specversion: SPEC_VERSION.into(),
            id: row.id.clone(),
            source: SOURCE.into(),
            event_type: row.event_type.clone(),
            time,
            subject: row.subject.clone(),
            dataschema: dataschema(&row.event_type, row.data_version),
            datacontenttype: "application/json".into(),
            data: row.data.clone(),
        }
    }
}

/// A message ready for `basic_publish`.
pub struct Outbound {
    pub routing_key: String,
    pub properties: BasicProperties,
    pub body: Vec<u8>,
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

/// The AMQP message of an outbox row: persistent, `message_id` = event id, binary content mode;
/// its `traceparent` header is the row's.
pub fn to_amqp(row: &OutboxDoc) -> Outbound {
    to_amqp_traced(row, row.traceparent.as_deref())
}

/// [`to_amqp`] with the `traceparent` header given: the publish span's, when traces are exported.
pub fn to_amqp_traced(row: &OutboxDoc, traceparent: Option<&str>) -> Outbound {
    let event = CloudEvent::from_outbox(row);
    let mut headers = FieldTable::default();
    for (name, value) in [
        ("specversion", &event.specversion),
        ("id", &event.id),
        ("source", &event.source),
        ("type", &event.event_type),
        ("time", &event.time),
        ("subject", &event.subject),
        ("dataschema", &event.dataschema),
    ] {
        headers.insert(ShortString::from(format!("{PREFIX}{name}")), text(value));
    }
    headers.insert(USER_HEADER.into(), text(&row.user_id));
    if let Some(traceparent) = traceparent {
        headers.insert(TRACEPARENT_HEADER.into(), text(traceparent));
    }
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(event.id.as_str().into())
        .with_type(event.event_type.as_str().into())
        .with_app_id("coffer".into())
        .with_timestamp((row.created_at.timestamp_millis() / 1000).max(0) as u64)
        .with_headers(headers);
    let body = serde_json::to_vec(&event.data).expect("JSON values serialise");
    Outbound {
        routing_key: event.event_type,
        properties,
        body,
    }
}

/// A header's text value, if present and textual.
pub fn header(properties: &BasicProperties, name: &str) -> Option<String> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// Reads a delivered message back into (user id, event). Refuses anything that is not complete.
pub fn from_amqp(properties: &BasicProperties, body: &[u8]) -> Result<(String, CloudEvent), EventsError> {
    let attribute = |name: &str| {
        header(properties, &format!("{PREFIX}{name}"))
            .ok_or_else(|| EventsError::Envelope(format!("missing {PREFIX}{name}")))
    };
    let user_id =
        header(properties, USER_HEADER).ok_or_else(|| EventsError::Envelope("missing user".into()))?;
    let data = serde_json::from_slice(body).map_err(|e| EventsError::Envelope(e.to_string()))?;
    let event = CloudEvent {
        specversion: attribute("specversion")?,
        id: attribute("id")?,
        source: attribute("source")?,
        event_type: attribute("type")?,
        time: attribute("time")?,
        subject: attribute("subject")?,
        dataschema: attribute("dataschema")?,
        datacontenttype: "application/json".into(),
        data,
    };
    Ok((user_id, event))
}

#[cfg(test)]
mod tests {
    use super::*;
    fn row() -> OutboxDoc {
        let data = serde_json::json!({ "wallet_id": "wallet-1", "available": "1.5", "decimals": 18 });
        let mut row = OutboxDoc::new("wallet.balance.updated", 1, "wallet-1", "user-1", data);
        row.id = "0190f0a0-0000-7000-8000-000000000001".into();
        row.created_at = coffer_store::codec::from_millis(1_700_000_000_123);
        row.attempts = 3;
        row.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        row.seq = 42;
        row.retry_at = Some(coffer_store::codec::from_millis(1_700_000_000_999));
        row.last_error = Some("NO_ROUTE".into());
        row
    }

    #[test]
    fn an_event_survives_the_amqp_round_trip_without_internal_fields() {
        let message = to_amqp(&row());
        assert_eq!(message.routing_key, "wallet.balance.updated");
        assert_eq!(message.properties.delivery_mode(), &Some(2));
        assert_eq!(
            message.properties.message_id().as_ref().map(|m| m.as_str()),
            Some(row().id.as_str())
        );
        assert_eq!(
            header(&message.properties, "traceparent").as_deref(),
            row().traceparent.as_deref()
        );
        let (user, event) = from_amqp(&message.properties, &message.body).unwrap();
        assert_eq!(user, "user-1");
        assert_eq!(event, CloudEvent::from_outbox(&row()));
        assert_eq!(event.time, "2023-11-14T22:13:20.123Z");
        assert_eq!(event.dataschema, "urn:coffer:schema:wallet.balance.updated:v1");
        let json = serde_json::to_value(&event).unwrap();
        let mut keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "data",
                "datacontenttype",
                "dataschema",
                "id",
                "source",
                "specversion",
                "subject",
                "time",
                "type"
            ]
        );
        assert_eq!(json["data"]["decimals"], 18);
    }
}
