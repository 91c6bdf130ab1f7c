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

/// The process's allocator: jemalloc, for the tests as for the binary. Under load over 10,000
/// rooms (rooms bench, embedded back ends) the service spent 61-86 µs of CPU per acked send on
/// it, against 91-128 µs on glibc's malloc, and held 135 MiB with [`MALLOC_CONF`], against 156 MiB
/// (see [`metrics::HEAP_IN_USE`] for what the allocator holds).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read when it starts (`_RJEM_MALLOC_CONF` in the environment is read after
/// them, so an operator can change any): two arenas, not four per core, since memory freed in
/// one arena serves only that arena; and freed pages returned to the system within about a
/// second, by a background thread, not ten. With jemalloc's defaults the service held 166 MiB in
/// the same bench, 52 MiB of it free.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8; 70] =
    b"narenas:2,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

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

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    #[test]
    fn jemalloc_starts_with_the_project_settings() {
        assert_eq!(tikv_jemalloc_ctl::opt::narenas::read().unwrap(), 2);
        assert!(tikv_jemalloc_ctl::background_thread::read().unwrap());
        let settings = std::str::from_utf8(&super::MALLOC_CONF[..]).unwrap();
        assert!(settings.ends_with('\0'), "a C string");
    }
}
