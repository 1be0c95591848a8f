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

/// Connects; the URI carries credentials and is never logged.
pub async fn connect(uri: &str, name: &str) -> Result<Connection, EventsError> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Ok(Connection::connect(uri, properties).await?)
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
