//! Connecting to RabbitMQ and declaring Coffer's topology (idempotent on every start):
//! the durable topic exchange, and its dead-letter exchange (fanout) with a durable queue.

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::{envelope, EventsError};

/// The dead-letter exchange and queue of `exchange` (same name for both).
pub fn dead_letter_name(exchange: &str) -> String {
    format!("{exchange}.dead-letter")
}

/// Where the broker is: an `amqp://` or `amqps://` URI (it carries credentials and is never
/// logged) and, for `amqps://`, the CA certificates trusted besides the platform's.
#[derive(Clone)]
pub struct Endpoint {
    uri: String,
    tls: lapin::tcp::OwnedTLSConfig,
}

impl Endpoint {
    /// `uri` with the platform's trust store.
    pub fn new(uri: impl Into<String>) -> Endpoint {
        Endpoint {
            uri: uri.into(),
            tls: Default::default(),
        }
    }

    /// Also trusts the extra CAs of `roots` (`COFFER_TLS_CA_FILE`) for `amqps://`.
    pub fn with_roots(mut self, roots: &coffer_tls::TlsRoots) -> Endpoint {
        self.tls.cert_chain = roots.extra_pem().map(str::to_string);
        self
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }
}

impl From<&str> for Endpoint {
    fn from(uri: &str) -> Endpoint {
        Endpoint::new(uri)
    }
}

impl From<String> for Endpoint {
    fn from(uri: String) -> Endpoint {
        Endpoint::new(uri)
    }
}

impl From<&String> for Endpoint {
    fn from(uri: &String) -> Endpoint {
        Endpoint::new(uri.as_str())
    }
}

/// Connects (TLS for `amqps://`: rustls on ring, verified against the platform's trust store and
/// the endpoint's extra CAs).
pub async fn connect(endpoint: impl Into<Endpoint>, name: &str) -> Result<Connection, EventsError> {
    let endpoint = endpoint.into();
    coffer_tls::install_ring_provider();
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let runtime = lapin::runtime::default_runtime()?;
    Ok(Connection::connect_with_config(&endpoint.uri, properties, endpoint.tls.clone(), runtime).await?)
}

/// Declares the events exchange, durable.
pub async fn declare_exchange(channel: &Channel, exchange: &str) -> Result<(), EventsError> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// A channel in confirm mode with the whole publisher topology declared.
pub async fn publisher_channel(connection: &Connection, exchange: &str) -> Result<Channel, EventsError> {
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    declare_exchange(&channel, exchange).await?;
    let dead = dead_letter_name(exchange);
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            dead.as_str().into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;
    let queue = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(dead.as_str().into(), queue, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            dead.as_str().into(),
            dead.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(channel)
}

/// Publishes a poison row to the dead-letter exchange with the reason; true once confirmed.
pub async fn publish_dead_letter(
    channel: &Channel,
    exchange: &str,
    row: &coffer_store::OutboxDoc,
    reason: &str,
) -> Result<bool, EventsError> {
    let message = envelope::to_amqp(row);
    let mut headers = message.properties.headers().clone().unwrap_or_default();
    let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
    headers.insert("coffer-dead-letter-reason".into(), text(reason));
    headers.insert("coffer-attempts".into(), AMQPValue::LongInt(row.attempts + 1));
    let properties = message.properties.with_headers(headers);
    let options = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let dead = dead_letter_name(exchange);
    let confirm = channel
        .basic_publish(
            dead.as_str().into(),
            message.routing_key.as_str().into(),
            options,
            &message.body,
            properties,
        )
        .await?
        .await?;
    Ok(matches!(confirm, lapin::Confirmation::Ack(None)))
}
