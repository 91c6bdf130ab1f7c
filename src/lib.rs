//! mess-chat: a message-based chat service. Every message travels through a broker (RabbitMQ)
//! and every room's history is kept in a document store (MongoDB), with an in-memory cache per
//! room and an HTTP API in front.
//!
//! # Layout
//! Dependencies point down only:
//!
//! - [`bench`]: `mess-chat bench`: broker and store baselines, then the service over HTTP.
//! - [`api`]: axum handlers, thin shells over the service; one [`api::ApiError`] type.
//! - [`service`]: [`service::ChatService`], the use cases; owns the room list and runs one
//!   consumer per room (broker → store → cache → ack → sender).
//! - [`room`]: [`room::ChatRoom`] (a bounded deque of messages plus metadata, with the seed's
//!   methods) and [`room::RoomList`].
//! - [`broker`]: the [`broker::Broker`] trait; [`broker::rmq`] (RabbitMQ via lapin) and
//!   [`broker::memory`] (in-process).
//! - [`store`]: the [`store::Store`] trait; [`store::mongo`] (MongoDB) and [`store::embedded`]
//!   (one redb file).
//! - [`model`]: messages, properties, metadata and validated names. No I/O.
//!
//! Beside them: [`server`] wires a configuration to back ends and serves HTTP; [`config`] reads
//! the configuration file; [`client`] is the
//! HTTP client of the CLI and the tests; [`backoff`] paces reconnects and retries; [`metrics`]
//! names what `/metrics` reports.

pub mod api;
pub mod backoff;
pub mod bench;
pub mod broker;
pub mod client;
pub mod config;
pub mod metrics;
pub mod model;
pub mod room;
pub mod server;
pub mod service;
pub mod store;
