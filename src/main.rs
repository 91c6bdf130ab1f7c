//! The `mess-chat` binary: `serve` runs the service; `send`, `messages`, `register`, `rooms` and
//! `tail` talk to one over HTTP (and a WebSocket, for `tail`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::builder::BoolishValueParser;
use clap::parser::ValueSource;
use clap::{
    ArgAction, ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum,
};
use mess_chat::broker::QueueType;
use mess_chat::broker::rmq::node_urls;
use mess_chat::client::{Client, SendParams};
use mess_chat::config::{FileConfig, redacted};
use mess_chat::model::RoomName;
use mess_chat::server::{Config, HttpLimits, Server};
use mess_chat::service::{Limits, Rate, ServiceConfig};
use mess_chat::store::embedded::EmbeddedStore;
use mess_chat::store::mongo::MongoStore;
use mess_chat::store::{Schema, Store};

/// A message-based chat over RabbitMQ and MongoDB (or embedded back ends).
#[derive(Parser)]
#[command(name = "mess-chat", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the chat service.
    Serve(ServeArgs),
    /// Send a message through a running server.
    Send(SendArgs),
    /// Print a room's latest messages from a running server.
    Messages(MessagesArgs),
    /// Register an alias and print its token.
    Register(RegisterArgs),
    /// List the rooms you are a member of.
    Rooms(RoomsArgs),
    /// Print a room's messages as they arrive, until interrupted.
    Tail(TailArgs),
    /// Measure the broker, the store and the service on top of them (see `bench --help`).
    Bench(mess_chat::bench::BenchArgs),
    /// Convert a store written by an earlier version (UUID message ids, named types) to this
    /// version's layout. Run it while no instance serves.
    Migrate(MigrateArgs),
}

#[derive(Args)]
struct MigrateArgs {
    /// RabbitMQ URL (or a cluster's nodes' URLs, separated by commas): also take the earlier
    /// versions' broker topology apart (old `<alias>` inbox queues, a room's queue bound to its
    /// own exchange) and declare this version's. Unset: the store only.
    #[arg(long, env = "MESS_CHAT_AMQP_URL")]
    amqp_url: Option<String>,
    /// Type of the queues declared (as `serve --queue-type`).
    #[arg(long, env = "MESS_CHAT_QUEUE_TYPE", value_enum, default_value_t = QueueType::Classic)]
    queue_type: QueueType,
    /// MongoDB URL; unset: the embedded store in --data-dir.
    #[arg(long, env = "MESS_CHAT_MONGO_URL")]
    mongo_url: Option<String>,
    /// MongoDB database name.
    #[arg(long, env = "MESS_CHAT_MONGO_DB", default_value = "mess_chat")]
    mongo_db: String,
    /// Directory of the embedded store.
    #[arg(long, env = "MESS_CHAT_DATA_DIR", default_value_os_t = default_data_dir())]
    data_dir: PathBuf,
}

#[derive(Args)]
struct ServeArgs {
    /// TOML file with any of these settings (keys as the flags, e.g. `amqp_url`); flags and
    /// environment variables take precedence over it.
    #[arg(long, env = "MESS_CHAT_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "MESS_CHAT_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// RabbitMQ URL, e.g. amqp://guest:guest@127.0.0.1:5672/%2f, or the URLs of a cluster's
    /// nodes separated by commas (the service connects to one that answers, and to another when
    /// it dies). Unset: embedded broker.
    #[arg(long, env = "MESS_CHAT_AMQP_URL")]
    amqp_url: Option<String>,
    /// Type of the queues declared on RabbitMQ: quorum queues are replicated over a cluster's
    /// nodes. Every instance of a deployment must use the type its queues have.
    #[arg(long, env = "MESS_CHAT_QUEUE_TYPE", value_enum, default_value_t = QueueType::Classic)]
    queue_type: QueueType,
    /// MongoDB URL, e.g. mongodb://127.0.0.1:27017/?retryWrites=false. Unset: embedded store.
    #[arg(long, env = "MESS_CHAT_MONGO_URL")]
    mongo_url: Option<String>,
    /// MongoDB database name.
    #[arg(long, env = "MESS_CHAT_MONGO_DB", default_value = "mess_chat")]
    mongo_db: String,
    /// Directory of the embedded store.
    #[arg(long, env = "MESS_CHAT_DATA_DIR", default_value_os_t = default_data_dir())]
    data_dir: PathBuf,
    /// Dev mode: the assignment-style endpoints are open without authentication. As a variable
    /// (or `--no-auth=<value>`) it takes true/false, 1/0, yes/no, on/off, any case.
    #[arg(
        long,
        env = "MESS_CHAT_NO_AUTH",
        value_parser = BoolishValueParser::new(),
        num_args = 0..=1,
        default_missing_value = "true",
        default_value_t = false,
        action = ArgAction::Set
    )]
    no_auth: bool,
    /// Messages kept in each room's in-memory cache.
    #[arg(long, env = "MESS_CHAT_CACHE_CAPACITY", default_value_t = 1000)]
    cache_capacity: usize,
    /// Messages kept in all rooms' caches together; past it, the caches of the rooms used
    /// longest ago are emptied (their messages stay in the store).
    #[arg(long, env = "MESS_CHAT_CACHE_TOTAL", default_value_t = mess_chat::service::DEFAULT_CACHE_TOTAL)]
    cache_total: usize,
    /// How long a send waits for its message to be stored before answering 202 (202 only on a
    /// durable broker; the embedded one answers 503 instead).
    #[arg(long, env = "MESS_CHAT_STORE_WAIT_MS", default_value_t = 3000)]
    store_wait_ms: u64,
    /// The room of the seed's `/send/` and `/messages/` when they name none.
    #[arg(long, env = "MESS_CHAT_DEFAULT_ROOM", default_value = mess_chat::service::DEFAULT_ROOM)]
    default_room: String,
    /// Most HTTP connections open at once (live sockets included); one more is answered 503.
    #[arg(long, env = "MESS_CHAT_MAX_CONNECTIONS", default_value_t = HttpLimits::default().max_connections)]
    max_connections: usize,
    /// Log format: text or json.
    #[arg(long, env = "MESS_CHAT_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// Most rooms one alias may own at once (0: no quota); one more is refused 403.
    #[arg(long, env = "MESS_CHAT_MAX_ROOMS_OWNED", default_value_t = SERVE.rooms_owned.unwrap_or(0))]
    max_rooms_owned: u64,
    /// Sends per second one alias may make on average (0: no limit); over it, 429.
    #[arg(long, env = "MESS_CHAT_SENDS_PER_SECOND", default_value_t = SERVE.sends.count)]
    sends_per_second: u32,
    /// Sends one alias may make at once after a quiet while.
    #[arg(long, env = "MESS_CHAT_SEND_BURST", default_value_t = SERVE.sends.burst)]
    send_burst: u32,
    /// Rooms one alias may create per second on average (0: no limit); over it, 429.
    #[arg(long, env = "MESS_CHAT_ROOM_CREATIONS_PER_SECOND", default_value_t = SERVE.room_creations.count)]
    room_creations_per_second: u32,
    /// Rooms one alias may create at once after a quiet while.
    #[arg(long, env = "MESS_CHAT_ROOM_CREATION_BURST", default_value_t = SERVE.room_creations.burst)]
    room_creation_burst: u32,
    /// Registrations per minute from one client address (the TCP peer's; 0: no limit); over
    /// it, 429.
    #[arg(long, env = "MESS_CHAT_REGISTRATIONS_PER_MINUTE", default_value_t = SERVE.registrations.count)]
    registrations_per_minute: u32,
    /// Registrations one client address may make at once after a quiet while.
    #[arg(long, env = "MESS_CHAT_REGISTRATION_BURST", default_value_t = SERVE.registrations.burst)]
    registration_burst: u32,
}

/// How many times `send` tries a message the server rate-limits.
const SEND_ATTEMPTS: u32 = 5;

/// The limits `serve` applies unless told otherwise.
const SERVE: Limits = Limits::SERVE;

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Args)]
struct ServerArg {
    /// Base URL of the mess-chat server.
    #[arg(
        long,
        env = "MESS_CHAT_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,
    /// Your bearer token (from `mess-chat register`); needed when the server runs with auth.
    #[arg(long, env = "MESS_CHAT_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl ServerArg {
    fn client(self) -> Client {
        Client::new(self.server).with_token(self.token)
    }
}

#[derive(Args)]
struct SendArgs {
    #[command(flatten)]
    server: ServerArg,
    /// Room to send to (created by its first message).
    #[arg(long)]
    room: String,
    /// Your alias.
    #[arg(long = "from")]
    from_alias: String,
    /// The other alias of a private room.
    #[arg(long = "to")]
    to_alias: Option<String>,
    /// Send to (or create) a group room. Without it, a new room with `--to` is private, one
    /// without `--to` a group room.
    #[arg(long, conflicts_with = "private")]
    group: bool,
    /// Send to (or create) a private room of you and `--to`.
    #[arg(long, requires = "to_alias")]
    private: bool,
    /// Makes a retry of this command safe: the same room, sender and key are stored once.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// The text.
    message: String,
}

#[derive(Args)]
struct MessagesArgs {
    #[command(flatten)]
    server: ServerArg,
    /// Room to read.
    #[arg(long)]
    room: String,
    /// How many of the newest messages.
    #[arg(long)]
    limit: Option<usize>,
}

#[derive(Args)]
struct RegisterArgs {
    #[command(flatten)]
    server: ServerArg,
    /// The alias to register.
    alias: String,
}

#[derive(Args)]
struct RoomsArgs {
    #[command(flatten)]
    server: ServerArg,
}

#[derive(Args)]
struct TailArgs {
    #[command(flatten)]
    server: ServerArg,
    /// Room to follow.
    room: String,
    /// Start after this sequence number (default: only new messages).
    #[arg(long)]
    after: Option<u64>,
}

impl ServeArgs {
    /// Fills every setting not given as a flag or environment variable from the file.
    fn apply(&mut self, file: FileConfig, given: &ArgMatches) -> anyhow::Result<()> {
        let unset = |id: &str| {
            !matches!(
                given.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        };
        if let (Some(v), true) = (file.listen, unset("listen")) {
            self.listen = v;
        }
        if let (Some(v), true) = (file.amqp_url, unset("amqp_url")) {
            self.amqp_url = Some(v.joined());
        }
        if let (Some(v), true) = (file.queue_type, unset("queue_type")) {
            self.queue_type = v;
        }
        if let (Some(v), true) = (file.mongo_url, unset("mongo_url")) {
            self.mongo_url = Some(v);
        }
        if let (Some(v), true) = (file.mongo_db, unset("mongo_db")) {
            self.mongo_db = v;
        }
        if let (Some(v), true) = (file.data_dir, unset("data_dir")) {
            self.data_dir = v;
        }
        if let (Some(v), true) = (file.no_auth, unset("no_auth")) {
            self.no_auth = v;
        }
        if let (Some(v), true) = (file.cache_capacity, unset("cache_capacity")) {
            self.cache_capacity = v;
        }
        if let (Some(v), true) = (file.cache_total, unset("cache_total")) {
            self.cache_total = v;
        }
        if let (Some(v), true) = (file.store_wait_ms, unset("store_wait_ms")) {
            self.store_wait_ms = v;
        }
        if let (Some(v), true) = (file.default_room, unset("default_room")) {
            self.default_room = v;
        }
        if let (Some(v), true) = (file.max_connections, unset("max_connections")) {
            self.max_connections = v;
        }
        if let (Some(v), true) = (file.max_rooms_owned, unset("max_rooms_owned")) {
            self.max_rooms_owned = v;
        }
        if let (Some(v), true) = (file.sends_per_second, unset("sends_per_second")) {
            self.sends_per_second = v;
        }
        if let (Some(v), true) = (file.send_burst, unset("send_burst")) {
            self.send_burst = v;
        }
        if let (Some(v), true) = (
            file.room_creations_per_second,
            unset("room_creations_per_second"),
        ) {
            self.room_creations_per_second = v;
        }
        if let (Some(v), true) = (file.room_creation_burst, unset("room_creation_burst")) {
            self.room_creation_burst = v;
        }
        if let (Some(v), true) = (
            file.registrations_per_minute,
            unset("registrations_per_minute"),
        ) {
            self.registrations_per_minute = v;
        }
        if let (Some(v), true) = (file.registration_burst, unset("registration_burst")) {
            self.registration_burst = v;
        }
        if let (Some(v), true) = (file.log_format, unset("log_format")) {
            self.log_format = LogFormat::from_str(&v, true)
                .map_err(|e| anyhow::anyhow!("log_format in the config file: {e}"))?;
        }
        Ok(())
    }

    /// The quota and rate limits these settings name.
    fn limits(&self) -> Limits {
        Limits {
            rooms_owned: (self.max_rooms_owned > 0).then_some(self.max_rooms_owned),
            sends: Rate::per_second(self.sends_per_second, self.send_burst),
            room_creations: Rate::per_second(
                self.room_creations_per_second,
                self.room_creation_burst,
            ),
            registrations: Rate::per_minute(self.registrations_per_minute, self.registration_burst),
        }
    }
}

fn default_data_dir() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/mess-chat"),
        None => PathBuf::from("mess-chat-data"),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,lapin=warn,mongodb=warn".into());
    // Colours only on a terminal: a log file or a pipe gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Most threads tokio runs blocking work on (the embedded store's redb calls, mostly; redb
/// writes one transaction at a time, and these machines have two cores). With tokio's default of
/// 512, 100 room creations at a time started about as many threads, each with a jemalloc thread
/// cache of its own: a peak RSS of 93 MiB for the bench's 1,000 rooms, against 38 MiB on glibc.
const BLOCKING_THREADS: usize = 16;

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let matches = Cli::command().get_matches();
    match Cli::from_arg_matches(&matches)?.command {
        Command::Serve(mut args) => {
            if let Some(path) = &args.config {
                let file = FileConfig::load(path)?;
                let given = matches
                    .subcommand_matches("serve")
                    .expect("serve was matched");
                args.apply(file, given)?;
            }
            serve(args).await
        }
        Command::Send(args) => {
            let client = args.server.client();
            let group_room = match (args.group, args.private, &args.to_alias) {
                (true, _, _) => Some(true),
                (_, true, _) | (_, _, Some(_)) => Some(false),
                _ => None,
            };
            let params = SendParams {
                room_name: args.room,
                message: args.message,
                from_alias: args.from_alias,
                to_alias: args.to_alias,
                group_room,
                idempotency_key: args.idempotency_key,
            };
            // Rate-limited (429): wait as the server says and try again, the text kept.
            let sent = client.send_retrying(&params, SEND_ATTEMPTS).await?;
            println!("{}", serde_json::to_string_pretty(&sent)?);
            Ok(())
        }
        Command::Messages(args) => {
            let client = args.server.client();
            for text in client.messages(&args.room, args.limit).await? {
                println!("{text}");
            }
            Ok(())
        }
        Command::Register(args) => {
            // Shell-evaluable on stdout: `eval "$(mess-chat register ann)"` sets the token.
            let registered = args.server.client().register(&args.alias).await?;
            println!("export MESS_CHAT_TOKEN='{}'", registered.token);
            eprintln!(
                "registered {}; its token is shown this once (eval this command's output to use \
                 it)",
                registered.alias
            );
            Ok(())
        }
        Command::Rooms(args) => {
            for room in args.server.client().rooms().await? {
                let kind = if room.group_room { "group" } else { "private" };
                let members: Vec<&str> = room.members.iter().map(|m| m.as_str()).collect();
                println!(
                    "{}\t{kind}\towner {}\tmembers {}",
                    room.name,
                    room.owner_alias,
                    members.join(",")
                );
            }
            Ok(())
        }
        Command::Tail(args) => tail(args).await,
        Command::Bench(args) => Ok(mess_chat::bench::run(args).await?),
        Command::Migrate(args) => migrate(args).await,
    }
}

/// Converts an earlier version's store, if it is one, then (given a RabbitMQ URL) its broker
/// topology. Every instance must be stopped; running it again changes nothing.
async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    init_logging(LogFormat::Text);
    let store: std::sync::Arc<dyn Store> = match &args.mongo_url {
        Some(url) => std::sync::Arc::new(MongoStore::connect(url, &args.mongo_db).await?),
        None => std::sync::Arc::new(EmbeddedStore::open(&args.data_dir)?),
    };
    match store.schema().await? {
        Schema::Current | Schema::Empty => {
            eprintln!("the store is already in this version's layout: nothing to do");
        }
        Schema::Legacy => {
            let converted = store.migrate().await?;
            eprintln!("converted {converted} messages to integer ids and types");
        }
    }
    if let Some(url) = &args.amqp_url {
        let upgraded = upgrade_topology(url, args.queue_type, store.as_ref()).await?;
        eprintln!(
            "broker: removed {} old bindings and deleted {} old inbox queues; declared the \
             topology of {} group rooms",
            upgraded.unbound, upgraded.deleted, upgraded.declared
        );
        if !upgraded.in_use.is_empty() {
            anyhow::bail!(
                "old inbox queues still have consumers (is an earlier version running?): {}; stop \
                 it and run `mess-chat migrate` again",
                upgraded.in_use.join(", ")
            );
        }
    }
    Ok(())
}

/// What `migrate` did on the broker.
struct TopologyUpgrade {
    unbound: usize,
    deleted: usize,
    in_use: Vec<String>,
    /// Group rooms whose topology (exchange, `inbox.<alias>` queues bound to it) was declared.
    declared: usize,
}

/// Takes the earlier broker topology of every group room in the store apart, then declares this
/// version's (so the members' new inboxes are bound before any instance starts).
async fn upgrade_topology(
    url: &str,
    queue_type: QueueType,
    store: &dyn Store,
) -> anyhow::Result<TopologyUpgrade> {
    use mess_chat::broker::rmq::RabbitBroker;
    use mess_chat::broker::rmq::legacy::{LegacyRoom, upgrade};
    let names = store
        .load_room_list(mess_chat::service::ROOM_LIST_NAME)
        .await?
        .map(|list| list.rooms)
        .unwrap_or_default();
    let mut metas = Vec::new();
    for name in &names {
        if let Some(meta) = store.load_room(name).await?
            && meta.group_room
        {
            metas.push(meta);
        }
    }
    let rooms: Vec<LegacyRoom> = metas
        .iter()
        .map(|meta| LegacyRoom {
            name: meta.name.clone(),
            members: meta.members.clone(),
        })
        .collect();
    let is_room = |queue: &str| names.iter().any(|name| name.as_str() == queue);
    let upgraded = upgrade(url, &rooms, is_room).await?;
    let mut declared = 0;
    if upgraded.in_use.is_empty() {
        let broker = RabbitBroker::new(url).with_queue_type(queue_type);
        for meta in &metas {
            mess_chat::room::declare_topology(&broker, meta).await?;
            declared += 1;
        }
    }
    Ok(TopologyUpgrade {
        unbound: upgraded.unbound,
        deleted: upgraded.deleted,
        in_use: upgraded.in_use,
        declared,
    })
}

/// Prints each live message of a room as `[seq] from: text`; reconnects where it left off.
async fn tail(args: TailArgs) -> anyhow::Result<()> {
    init_logging(LogFormat::Text);
    let client = args.server.client();
    let mut feed = client
        .live(&args.room, args.after)
        .await
        .with_context(|| format!("cannot follow {}", args.room))?;
    let interrupted = shutdown_signal();
    tokio::pin!(interrupted);
    loop {
        let next = tokio::select! {
            next = feed.next() => next?,
            () = &mut interrupted => return Ok(()),
        };
        let Some(message) = next else {
            eprintln!("room {} was deleted", args.room);
            return Ok(());
        };
        println!(
            "[{}] {}: {}",
            message.mess_props.sequence_number.unwrap_or_default(),
            message.mess_props.from_user,
            message.message
        );
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let limits = args.limits();
    let config = Config {
        listen: args.listen,
        amqp_url: args.amqp_url,
        queue_type: args.queue_type,
        mongo_url: args.mongo_url,
        mongo_db: args.mongo_db,
        data_dir: args.data_dir,
        no_auth: args.no_auth,
        service: ServiceConfig {
            cache_capacity: args.cache_capacity,
            cache_total: args.cache_total,
            store_wait: Duration::from_millis(args.store_wait_ms),
            require_auth: !args.no_auth,
            default_room: RoomName::new(args.default_room)
                .context("--default-room / MESS_CHAT_DEFAULT_ROOM")?,
            limits,
        },
        http: HttpLimits {
            max_connections: args.max_connections.max(1),
            ..HttpLimits::default()
        },
    };
    let broker = match &config.amqp_url {
        Some(urls) if node_urls(urls).is_empty() => {
            anyhow::bail!("--amqp-url / MESS_CHAT_AMQP_URL holds no URL")
        }
        Some(urls) => {
            let nodes: Vec<String> = node_urls(urls).iter().map(|u| redacted(u)).collect();
            format!("{} ({} queues)", nodes.join(","), config.queue_type)
        }
        None => {
            if config.queue_type != QueueType::Classic {
                tracing::warn!(queue_type = %config.queue_type, "no RabbitMQ: --queue-type has no effect");
            }
            "embedded (in-process)".into()
        }
    };
    let store = match &config.mongo_url {
        Some(url) => format!("{} (database {})", redacted(url), config.mongo_db),
        None => format!("embedded ({})", config.data_dir.display()),
    };
    tracing::info!(%broker, %store, "starting");
    raise_open_files_limit();
    let server = Server::start(&config).await.context("cannot start")?;
    println!("mess-chat listening on http://{}", server.addr());
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.stop().await.context("shutdown")?;
    Ok(())
}

/// Raises the soft limit of open files to the hard one (every connection, live socket and broker
/// channel needs descriptors), and logs both.
fn raise_open_files_limit() {
    let before = rlimit::getrlimit(rlimit::Resource::NOFILE).ok();
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => {
            let hard = before.map_or(soft, |(_, hard)| hard);
            let was = before.map_or(soft, |(soft, _)| soft);
            tracing::info!(soft, hard, was, "open files limit");
        }
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler can be installed");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
