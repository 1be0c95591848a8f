//! The API replica's consumer: its own exclusive, auto-delete queue bound to every event of the
//! exchange, feeding the [`StreamHub`]. Prefetch bounds what is in flight; reconnects with backoff.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;

use crate::publisher::Readiness;
use crate::{broker, envelope, EventsError, Live, StreamHub};

const PREFETCH: u16 = 256;

/// Consumes `exchange` forever, fanning events out to `hub`.
pub async fn run(
    broker: impl Into<broker::Endpoint>,
    exchange: String,
    hub: StreamHub,
    readiness: Readiness,
) {
    let broker = broker.into();
    let mut failures: u32 = 0;
    loop {
        let error = consume_until_error(&broker, &exchange, &hub, &readiness).await;
        readiness.set(false);
        failures = failures.saturating_add(1).min(16);
        let pause = crate::backoff(
            Duration::from_millis(200),
            failures,
            crate::publisher::RECONNECT_MAX,
        );
        tracing::warn!(error = %error, retry_in_ms = pause.as_millis() as u64, "stream consumer lost the broker; reconnecting");
        tokio::time::sleep(pause).await;
    }
}

async fn consume_until_error(
    amqp_uri: &broker::Endpoint,
    exchange: &str,
    hub: &StreamHub,
    readiness: &Readiness,
) -> EventsError {
    match consume(amqp_uri, exchange, hub, readiness).await {
        Ok(()) => EventsError::Envelope("the broker cancelled the consumer".into()),
        Err(e) => e,
    }
}

async fn consume(
    amqp_uri: &broker::Endpoint,
    exchange: &str,
    hub: &StreamHub,
    readiness: &Readiness,
) -> Result<(), EventsError> {
    let connection = broker::connect(amqp_uri.clone(), "coffer-api-stream").await?;
    let channel = connection.create_channel().await?;
    channel.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
    broker::declare_exchange(&channel, exchange).await?;
    let options = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let queue = channel
        .queue_declare("".into(), options, FieldTable::default())
        .await?;
    let name = queue.name().clone();
    channel
        .queue_bind(
            name.clone(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut consumer = channel
        .basic_consume(
            name,
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    readiness.set(true);
    // Whatever was published while this replica had no queue reached none of its connections:
    // they end here and their clients resume from the outbox (found by the fault harness).
    let resumed = hub.restart_feed();
    tracing::info!(%exchange, connections_to_resume = resumed, "stream consumer connected");
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        let span = process_span(exchange, &delivery);
        span.in_scope(
            || match envelope::from_amqp(&delivery.properties, &delivery.data) {
                Ok((user_id, event)) => {
                    let trace = coffer_telemetry::propagation::span_context(&span);
                    hub.dispatch(&user_id, Arc::new(Live { event, trace }));
                }
                Err(e) => tracing::warn!(error = %e, "ignoring a message that is not a Coffer event"),
            },
        );
        delivery.acker.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}

/// The consumer span of one delivery, a child of the publish span named by its `traceparent`.
fn process_span(exchange: &str, delivery: &lapin::message::Delivery) -> tracing::Span {
    let message_id = delivery.properties.message_id().as_ref().map(|id| id.as_str());
    let span = tracing::info_span!(
        parent: None,
        "process",
        otel.name = format!("process {exchange}").as_str(),
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = exchange,
        messaging.rabbitmq.destination.routing_key = delivery.routing_key.as_str(),
        messaging.message.id = message_id.unwrap_or(""),
    );
    let traceparent = envelope::header(&delivery.properties, envelope::TRACEPARENT_HEADER);
    coffer_telemetry::propagation::set_parent_from_traceparent(&span, traceparent.as_deref(), None);
    span
}
