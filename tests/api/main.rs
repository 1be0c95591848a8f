//! Integration tests of the API and the ledger against the real MongoDB-compatible server.
//! Each test starts its own app on 127.0.0.1:0 with its own database.

mod address_book;
mod admin;
mod audit;
mod auth;
mod authorization;
mod batch;
mod chain;
mod concurrency;
mod console;
mod contract;
mod devices;
mod idempotency;
mod ledger;
mod liabilities;
mod logs;
mod metrics;
mod mfa;
mod outbox;
mod plans;
mod readiness;
mod reconcile;
mod reserves;
mod responses;
mod risk;
mod routes;
mod sessions;
mod staff_wallets;
mod statements;
mod stream;
mod tls;
mod traces;
mod transfer_policy;
mod validation;
mod webhooks;
mod withdrawals;
