//! The daemon's lifecycle: open the store, recover, start the engine, serve
//! gRPC (JobService, health, reflection), and drain on shutdown in the order
//! DESIGN.md's "Lifecycle" gives.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::api::workers::WorkerApi;
use crate::api::JobApi;
use crate::config::{Config, ConfigError, KindSettings, TokenConfig};
use crate::engine::{Engine, EngineTasks};
use crate::handlers::remote::Workers;
use crate::handlers::Registry;
use crate::job::now_micros;
use crate::metrics::Metrics;
use crate::proto::{
    self, admin_service_server::AdminServiceServer, job_service_server::JobServiceServer,
    worker_service_server::WorkerServiceServer,
};
use crate::store::{self, StoreError};
use crate::transport::auth::{Authenticated, Tokens};
use crate::transport::grpc_metrics::GrpcMetricsLayer;
use crate::transport::request_budget::{RequestBudgetLayer, RequestBudgets};
use crate::transport::tls::Tls;

/// How long the gRPC server may take to close its connections after the
/// watch streams ended; tonic itself would wait without limit.
pub const SERVER_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 flow-control windows for requests: how much a client may send
/// before the server reads it. Request data the application has not read yet
/// waits in these (at most the connection window per connection, outside the
/// request budgets); what it has read is charged to the budgets (see
/// [`crate::transport::request_budget`]). 256 KiB keeps `max_connections` x window
/// small (256 MiB at the default 1,024 connections) and still fills a 1 ms
/// round trip at 250 MB/s per connection.
pub const H2_STREAM_WINDOW: u32 = 256 * 1024;
pub const H2_CONNECTION_WINDOW: u32 = 256 * 1024;
/// How often the store is probed for health (a shared store always; any
/// store after it refused a write).
const STORE_PING_EVERY: Duration = Duration::from_secs(1);
/// Successful probe writes in a row after which a store that refused writes
/// counts as writable again.
const STORE_PROBES_TO_RECOVER: u32 = 2;
/// Failed probes in a row that turn health NOT_SERVING.
const STORE_PING_FAILURES: u32 = 2;
/// How long flushing the store at exit may take.
pub const STORE_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// How a running daemon is told to stop: `drain` starts the drain sequence,
/// `force` (a second signal) skips to the end.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    pub drain: CancellationToken,
    pub force: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// First SIGTERM or SIGINT drains; a second one forces.
    pub fn on_signals() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let s = Shutdown::new();
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let s2 = s.clone();
        tokio::spawn(async move {
            for token in [&s2.drain, &s2.force] {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                token.cancel();
            }
        });
        Ok(s)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open store: {0}")]
    Store(#[from] StoreError),
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("HTTP/JSON routes: {0}")]
    Json(#[from] crate::http::json::JsonError),
    /// The server task panicked or was aborted.
    #[error("gRPC server task failed: {0}")]
    Server(#[from] tokio::task::JoinError),
    #[error("cannot start OTLP span export: {0}")]
    Otlp(#[from] crate::otel::StartError),
    #[error("cannot listen on {addr} (admin_listen): {source}")]
    AdminBind {
        addr: String,
        source: std::io::Error,
    },
}

/// A config checked and resolved once, with every file it names read once:
/// what `jobd serve` runs and `jobd check-config` prints. Library users and
/// tests may register their own handlers in `registry` before [`run`].
pub struct Prepared {
    pub config: Config,
    pub kinds: Vec<KindSettings>,
    pub registry: Registry,
    /// Remote worker sessions (kinds with `handler = "remote"`).
    pub workers: Arc<Workers>,
    tokens: Vec<TokenConfig>,
    tls: Option<Arc<Tls>>,
}

impl Prepared {
    /// Settings that work but are likely not what was meant (logged by
    /// [`prepare`], printed by `check-config`).
    pub fn warnings(&self) -> Vec<String> {
        crate::config::warnings::warnings(&self.config, &self.tokens)
    }
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("config", &self.config)
            .field("kinds", &self.kinds)
            .field("tokens", &self.tokens.len())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Checks the config, resolves the kinds, builds the handler registry, and
/// reads the token and TLS files: each exactly once (TLS again on SIGHUP).
pub fn prepare(config: Config) -> Result<Prepared, ConfigError> {
    let kinds = config.validate()?;
    let workers = Workers::new(
        config.workers.heartbeat_interval,
        config.workers.max_sessions,
    );
    let registry = Registry::from_kinds(&kinds, &workers).map_err(|e| {
        // "kinds.NAME.KEY: why" names its key.
        let text = e.to_string();
        let (key, message) = text.split_once(": ").unwrap_or(("kinds", &text));
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
            source: Some(Box::new(e)),
        }
    })?;
    let tokens = config.auth.load_tokens()?;
    for warning in crate::config::warnings::warnings(&config, &tokens) {
        tracing::warn!("{warning}");
    }
    let tls = config.tls.as_ref().map(Tls::new).transpose()?;
    Ok(Prepared {
        config,
        kinds,
        registry,
        workers,
        tokens,
        tls,
    })
}

/// Runs the daemon, binding the admin listener from `admin_listen` unless
/// it is "off".
pub async fn run(
    prepared: Prepared,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), RunError> {
    let admin = match prepared.config.admin_listen.as_str() {
        "off" => None,
        addr => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| RunError::AdminBind {
                    addr: addr.to_string(),
                    source,
                })?,
        ),
    };
    run_with_listeners(prepared, listener, admin, shutdown).await
}

/// Runs the daemon on listeners the caller bound (tests bind port 0): open,
/// recover, serve, and drain when `shutdown` says so.
pub async fn run_with_listeners(
    prepared: Prepared,
    listener: TcpListener,
    admin: Option<TcpListener>,
    shutdown: Shutdown,
) -> Result<(), RunError> {
    let Prepared {
        config,
        kinds,
        registry,
        workers,
        tokens,
        tls,
    } = prepared;
    let kind_names: Vec<String> = kinds.iter().map(|k| k.name.clone()).collect();
    let (store, metrics) = open(&config).await?;
    let paused = recover(&store, &metrics, &kind_names).await?;
    let (engine, tasks) = Engine::start(
        &config,
        kinds,
        registry,
        store.clone(),
        metrics.clone(),
        paused,
    );
    engine.use_workers(workers.clone());
    let (spans, exporter) = crate::otel::start(&config.tracing)?.unzip();
    if let Some(s) = &spans {
        engine.use_spans(s.clone());
    }
    let admin = AdminListener::start(admin, &engine);
    let auth_on = !tokens.is_empty();
    let tls_on = tls.is_some();
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let routes = one_port_routes(&config, &engine, &workers, tokens, spans)?;
    let mut server = serve(&config, routes, listener, tls);
    if !auth_on && !tls_on && !listener_is_loopback(&local) {
        tracing::warn!(
            listen = %local,
            "SECURITY: listening beyond loopback without authentication or TLS: anyone who can \
             reach this port can submit jobs (and run the configured commands); set [auth] tokens"
        );
    }
    let health = Health::start(&engine, &server.reporter).await;
    tracing::info!(
        listen = %local,
        admin = %admin.addr.map_or_else(|| "off".to_string(), |a| a.to_string()),
        store = %crate::config::redact_url_password(&config.store),
        kinds = %kind_names.join(","),
        workers = config.queue.workers,
        auth = auth_on,
        tls = tls_on,
        "jobd serving"
    );
    tracing::info!("dashboard: {}", dashboard_url(&local, tls_on));

    tokio::select! {
        _ = shutdown.drain.cancelled() => {}
        r = &mut server.task => {
            engine.stop_accepting();
            engine.stop_lease_renewal();
            admin.stop.cancel();
            let _ = store.close().await;
            return Ok(r??);
        }
    }
    let running = Running {
        engine,
        tasks,
        workers,
        store,
        server,
        health,
        admin,
        exporter,
    };
    running.drain(&config, &shutdown).await
}

/// The dashboard's address for the start-up log: the listening address,
/// with a loopback one in place of "every interface" so it can be opened.
fn dashboard_url(local: &str, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    let host = match local.parse::<std::net::SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() && a.is_ipv4() => format!("127.0.0.1:{}", a.port()),
        Ok(a) if a.ip().is_unspecified() => format!("[::1]:{}", a.port()),
        _ => local.to_string(),
    };
    format!("{scheme}://{host}/ui/")
}

/// Step 1, open: the store as configured, and the metrics that will count
/// what it holds.
async fn open(config: &Config) -> Result<(store::SharedStore, Arc<Metrics>), RunError> {
    let store = store::open_for(config).await?;
    Ok((store, Arc::new(Metrics::new())))
}

/// Step 2, recover: jobs that were running when jobd last stopped are
/// requeued, the state gauges start from the store's counts, and what will
/// not run (unconfigured or paused kinds) is logged. Answers the paused
/// kinds.
async fn recover(
    store: &store::SharedStore,
    metrics: &Metrics,
    kind_names: &[String],
) -> Result<BTreeSet<String>, StoreError> {
    let recovered = store.recover(now_micros()).await?;
    // Children moved by recovered jobs' ends: the counts below include them.
    drop(store.take_moved());
    metrics.requeued("recovered", recovered.len());
    let mut unconfigured: BTreeMap<String, u64> = BTreeMap::new();
    for (state, kind, n) in store.count_by_kind().await? {
        metrics.set_state_count(state, &kind, n);
        if !state.is_terminal() && !kind_names.contains(&kind) {
            *unconfigured.entry(kind).or_default() += n;
        }
    }
    // Jobs of a kind no longer in the config never run and hold backlog
    // places: say so at start, and keep it visible in the metrics.
    for (kind, jobs) in &unconfigured {
        tracing::warn!(
            kind = %kind,
            jobs,
            "jobs wait for a kind that is not configured: they will not run until it is \
             declared again (or cancel them); they count against queue.max_backlog"
        );
        metrics.set_unconfigured_kind_jobs(kind, *jobs);
    }
    if !recovered.is_empty() {
        tracing::warn!(
            jobs = recovered.len(),
            "jobs were running when jobd last stopped; their attempts count as used and they were requeued"
        );
    }
    let paused = store.paused_kinds().await?;
    if !paused.is_empty() {
        tracing::warn!(kinds = ?paused, "kinds are paused: their jobs wait until ResumeKind");
    }
    Ok(paused)
}

/// The probe and metrics listener (`admin_listen`), when there is one.
struct AdminListener {
    addr: Option<std::net::SocketAddr>,
    task: Option<JoinHandle<()>>,
    stop: CancellationToken,
}

impl AdminListener {
    fn start(listener: Option<TcpListener>, engine: &Arc<Engine>) -> Self {
        let stop = CancellationToken::new();
        let addr = listener.as_ref().and_then(|l| l.local_addr().ok());
        let task =
            listener.map(|l| tokio::spawn(crate::probes::serve(l, engine.clone(), stop.clone())));
        AdminListener { addr, task, stop }
    }

    /// Stops accepting and gives open probe requests a second to finish.
    async fn stop(self) {
        self.stop.cancel();
        if let Some(t) = self.task {
            let _ = tokio::time::timeout(Duration::from_secs(1), t).await;
        }
    }
}

/// The routes on the one port: JobService, WorkerService, AdminService,
/// health and reflection over gRPC and gRPC-Web, and the HTTP/JSON door,
/// steered by content type (see [`crate::http`]).
fn one_port_routes(
    config: &Config,
    engine: &Arc<Engine>,
    workers: &Arc<Workers>,
    tokens: Vec<TokenConfig>,
    spans: Option<crate::otel::Spans>,
) -> Result<OnePort, RunError> {
    let streams_stop = CancellationToken::new();
    let limit = config.max_message_bytes();
    let reply_limit = config.max_reply_bytes();
    let tokens = Tokens::new(tokens, config.auth.submit_rate);
    let api = Arc::new(JobApi::new(
        engine.clone(),
        tokens.clone(),
        config.queue.max_batch,
        crate::api::WatchLimits {
            per_connection: config.limits.max_watchers_per_connection,
            per_client: config.limits.max_watchers_per_client,
            idle_timeout: config.limits.watch_idle_timeout,
        },
        reply_limit,
        streams_stop.clone(),
    ));
    let admin_api = Arc::new(crate::api::operations::AdminApi::new(
        engine.clone(),
        workers.clone(),
    ));
    let service = JobServiceServer::from_arc(api.clone())
        .max_decoding_message_size(limit)
        .max_encoding_message_size(reply_limit);
    let worker_service = Authenticated::new(
        WorkerServiceServer::new(WorkerApi::new(
            engine.clone(),
            workers.clone(),
            config.workers.sessions_per_client(),
            streams_stop.clone(),
        ))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(reply_limit),
        tokens.clone(),
    );
    let admin_service = Authenticated::new(
        AdminServiceServer::from_arc(admin_api.clone()),
        tokens.clone(),
    );
    let json_door = crate::http::router(Arc::new(crate::http::HttpApi::new(
        api,
        admin_api,
        tokens.clone(),
        crate::http::json::Json::new()?,
        // Base64 makes a payload 4/3 larger in JSON, and names add more: a
        // request that fits gRPC's limit must fit this one.
        limit.saturating_mul(2),
        config.limits.request_timeout,
        engine.metrics().clone(),
    )));
    let (reporter, health) = tonic_health::server::health_reporter();
    let (reflection_v1, reflection_v1alpha) = reflection()?;
    let grpc_routes = tonic::service::Routes::builder()
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(Authenticated::new(service, tokens))
        .add_service(worker_service)
        .add_service(admin_service)
        .clone()
        .routes();
    let grpc = tower::ServiceBuilder::new()
        .layer(GrpcMetricsLayer {
            metrics: engine.metrics().clone(),
            spans,
        })
        // Inside the metrics layer, so metrics count the corrected codes.
        .layer(crate::transport::protocol::ProtocolErrorsLayer)
        .service(grpc_routes);
    // gRPC, gRPC-Web and JSON on one port, by content type (see crate::http).
    let grpc_web = tower::Layer::layer(&tonic_web::GrpcWebLayer::new(), grpc.clone());
    let router = crate::http::one_port(
        axum::Router::new().fallback_service(grpc),
        axum::Router::new().fallback_service(grpc_web),
        json_door,
        crate::http::hosts::AllowedHosts::new(&config.listen, &config.http.allowed_hosts),
    );
    Ok(OnePort {
        router,
        reporter,
        streams_stop,
    })
}

/// The one port's routes, with the handles the lifecycle keeps.
struct OnePort {
    router: axum::Router,
    reporter: HealthReporter,
    /// Ends watch streams at the drain: the server's own shutdown would wait
    /// for them without limit.
    streams_stop: CancellationToken,
}

use tonic_reflection::server::{v1, v1alpha};

/// Reflection (v1 and v1alpha) for jobd's protos, health, and the error
/// details that grpcurl prints.
#[allow(clippy::type_complexity)]
fn reflection() -> Result<
    (
        v1::ServerReflectionServer<impl v1::ServerReflection>,
        v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>,
    ),
    RunError,
> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc.BadRequest & co., so grpcurl can print error details.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}

/// The gRPC server task, and what ends it.
struct Server {
    task: JoinHandle<Result<(), tonic::transport::Error>>,
    /// Closes the server (GOAWAY) at the end of the drain.
    stop: CancellationToken,
    reporter: HealthReporter,
    streams_stop: CancellationToken,
}

/// Step 3, serve: the one port on `listener`, with the connection limits
/// and HTTP/2 settings of `[limits]`, over TLS when configured.
fn serve(config: &Config, routes: OnePort, listener: TcpListener, tls: Option<Arc<Tls>>) -> Server {
    let slots =
        crate::transport::connections::Slots::new(crate::transport::connections::ConnLimits {
            max_connections: config.limits.max_connections,
            max_per_peer: config.limits.max_connections_per_peer,
            handshake_timeout: config.limits.handshake_timeout,
            idle_timeout: config.limits.idle_connection_timeout,
        });
    let router = tonic::transport::Server::builder()
        // HTTP/1.1 for curl, browsers and gRPC-Web; gRPC itself stays HTTP/2.
        .accept_http1(true)
        .max_concurrent_streams(Some(config.limits.max_concurrent_streams))
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .http2_keepalive_interval(Some(config.limits.keepalive_interval))
        .http2_keepalive_timeout(Some(config.limits.keepalive_timeout))
        .timeout(config.limits.request_timeout)
        // One span per request (visible at RUST_LOG=debug).
        .trace_fn(|req| tracing::debug_span!("rpc", method = %req.uri().path()))
        // Requests under way per connection: idle ones can be closed.
        .layer(crate::transport::activity::ActivityLayer {
            slots: slots.clone(),
        })
        // Request bodies of every protocol are charged to the budgets.
        .layer(RequestBudgetLayer {
            budgets: RequestBudgets::new(
                config.limits.max_buffered_request_bytes,
                config.limits.max_buffered_request_bytes_per_connection,
            ),
        })
        .add_routes(tonic::service::Routes::from(routes.router));
    let server_stop = CancellationToken::new();
    let stop = server_stop.clone().cancelled_owned();
    let handshake = config.limits.handshake_timeout;
    let task = match tls {
        Some(tls) => {
            tokio::spawn(reload_tls_on_sighup(tls.clone(), server_stop.clone()));
            let incoming =
                crate::transport::connections::incoming_tls(listener, slots, handshake, tls);
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stop))
        }
        None => {
            let incoming = crate::transport::connections::incoming(listener, slots, handshake);
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stop))
        }
    };
    Server {
        task,
        stop: server_stop,
        reporter: routes.reporter,
        streams_stop: routes.streams_stop,
    }
}

/// Health SERVING, then following the store (see [`follow_store_health`]).
struct Health {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Health {
    async fn start(engine: &Arc<Engine>, reporter: &HealthReporter) -> Self {
        set_health(reporter, ServingStatus::Serving).await;
        engine.metrics().set_ready(true);
        let stop = CancellationToken::new();
        // Running out of disk: a SQLite store keeps its free-space reserve.
        if let Some(d) = engine.disk() {
            tokio::spawn(d.clone().watch(stop.clone()));
        }
        let task = tokio::spawn(follow_store_health(
            engine.clone(),
            reporter.clone(),
            engine.metrics().clone(),
            stop.clone(),
        ));
        Health { stop, task }
    }
}

/// Everything the daemon started, which the drain stops in order.
struct Running {
    engine: Arc<Engine>,
    tasks: EngineTasks,
    workers: Arc<Workers>,
    store: store::SharedStore,
    server: Server,
    health: Health,
    admin: AdminListener,
    exporter: Option<crate::otel::Exporter>,
}

impl Running {
    /// Step 4, drain, in the order DESIGN.md's "Lifecycle" gives; a second
    /// signal (`shutdown.force`) cuts each wait short.
    async fn drain(self, config: &Config, shutdown: &Shutdown) -> Result<(), RunError> {
        let Running {
            engine,
            tasks,
            workers,
            store,
            mut server,
            health,
            admin,
            exporter,
        } = self;
        // 1. The "open" sign goes off first (and stays off).
        health.stop.cancel();
        let _ = health.task.await;
        tracing::info!(grace = ?config.drain.grace, "draining: health NOT_SERVING");
        set_health(&server.reporter, ServingStatus::NotServing).await;
        engine.metrics().set_ready(false);
        // 2. Keep serving while load balancers notice.
        tokio::select! {
            _ = tokio::time::sleep(config.drain.grace) => {}
            _ = shutdown.force.cancelled() => {}
        }
        // 3-4. Refuse new jobs, stop dispatch, let running jobs finish; remote
        // workers are told to report what they hold by the drain's deadline.
        engine.stop_accepting();
        workers.drain(std::time::SystemTime::now() + config.drain.timeout);
        tracing::info!(timeout = ?config.drain.timeout, "draining: no new jobs; waiting for running jobs");
        let stopped = engine
            .drain(tasks, config.drain.timeout, &shutdown.force)
            .await;
        // 5. End watch streams, close the server (GOAWAY), flush the store.
        server.streams_stop.cancel();
        server.stop.cancel();
        tokio::select! {
            r = tokio::time::timeout(SERVER_CLOSE_TIMEOUT, &mut server.task) => {
                if r.is_err() {
                    tracing::warn!("connections still open after {SERVER_CLOSE_TIMEOUT:?}; closing them");
                    server.task.abort();
                }
            }
            _ = shutdown.force.cancelled() => server.task.abort(),
        }
        admin.stop().await;
        match tokio::time::timeout(STORE_CLOSE_TIMEOUT, store.close()).await {
            Ok(r) => r?,
            Err(_) => tracing::error!("store did not close in {STORE_CLOSE_TIMEOUT:?}; exiting anyway (committed jobs are on disk)"),
        }
        if let Some(exporter) = exporter {
            exporter.shutdown().await;
        }
        tracing::info!(requeued = stopped, "jobd stopped");
        Ok(())
    }
}

/// Health follows the store. A shared (remote) store is pinged: NOT_SERVING
/// while it cannot be reached. Any store that refused a write (a full disk)
/// is NOT_SERVING until a probe write succeeds twice in a row. Either way
/// probes and load balancers steer clients to other instances, and back once
/// it works again.
async fn follow_store_health(
    engine: Arc<Engine>,
    reporter: HealthReporter,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let store = engine.store().clone();
    let shared = store.is_shared();
    let (mut up, mut ping_failures, mut probes_ok) = (true, 0, 0);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(STORE_PING_EVERY) => {}
            _ = stop.cancelled() => return,
        }
        let mut why = engine.disk_low();
        if shared {
            let ok = tokio::select! {
                r = store.ping() => r,
                _ = stop.cancelled() => return,
            };
            ping_failures = if ok.is_ok() { 0 } else { ping_failures + 1 };
            // One slow ping is not an outage.
            if ping_failures >= STORE_PING_FAILURES {
                why = ok.err().map(|e| format!("store unreachable: {e}"));
            }
        }
        if engine.write_failing() {
            let probe = tokio::select! {
                r = store.probe_write() => r,
                _ = stop.cancelled() => return,
            };
            probes_ok = if probe.is_ok() { probes_ok + 1 } else { 0 };
            if probes_ok >= STORE_PROBES_TO_RECOVER {
                engine.write_recovered();
                probes_ok = 0;
            } else if why.is_none() {
                why = Some(match probe {
                    Ok(()) => "store refused writes; probing".to_string(),
                    Err(e) => format!("store refuses writes: {e}"),
                });
            }
        }
        let now_up = why.is_none();
        if now_up == up {
            continue;
        }
        up = now_up;
        match why {
            None => tracing::info!("store works again: health SERVING"),
            Some(why) => tracing::warn!(%why, "health NOT_SERVING"),
        }
        let status = if up {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        set_health(&reporter, status).await;
        metrics.set_ready(up);
    }
}

/// SIGHUP re-reads the TLS files: new connections get the new certificate,
/// open ones keep theirs. A bad file is logged and the old settings stay.
async fn reload_tls_on_sighup(tls: Arc<Tls>, stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; TLS files will not be reloaded");
            return;
        }
    };
    loop {
        tokio::select! {
            r = hup.recv() => if r.is_none() { return },
            _ = stop.cancelled() => return,
        }
        match tls.reload() {
            Ok(()) => tracing::info!("SIGHUP: TLS certificate and key reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: TLS reload failed; keeping the current certificate")
            }
        }
    }
}

fn listener_is_loopback(addr: &str) -> bool {
    addr.parse::<std::net::SocketAddr>()
        .map(|a| a.ip().is_loopback())
        .unwrap_or(false)
}

async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter
        .set_service_status(
            <JobServiceServer<JobApi> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
}
