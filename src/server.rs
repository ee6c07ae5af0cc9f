//! Assembles the Pingora server: the client listener, config reload on SIGHUP, the
//! in-process fake providers of `kind: mock`, and a draining shutdown on SIGTERM.

use crate::admin::{Admin, Reload};
use crate::config::{self, Config};
use crate::mock;
use crate::proxy::probe::Prober;
use crate::proxy::{Gateway, GatewayState};
use crate::routing::RoutingTable;
use async_trait::async_trait;
use pingora::connectors::http::v1::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Listener addresses given on the command line, overriding the config file.
#[derive(Debug, Default, Clone)]
pub struct ListenOverrides {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
}

/// Checks an address parses and is free now, so a taken port fails startup clearly
/// (Pingora would only log it).
fn check_listen(what: &str, addr: &str) -> Result<(), String> {
    addr.parse::<SocketAddr>()
        .map_err(|e| format!("{what} address `{addr}`: {e}"))?;
    std::net::TcpListener::bind(addr)
        .map_err(|e| format!("cannot listen on {addr} ({what}): {e}"))?;
    Ok(())
}

/// Runs the gateway until SIGTERM (drain, then exit) or SIGINT (exit now).
pub fn serve(config_path: &Path, overrides: ListenOverrides) -> Result<(), String> {
    let cfg = config::load(config_path).map_err(|e| e.to_string())?;
    let table = build_table(&cfg, None, &config_dir(config_path))?;
    let listen = overrides
        .listen
        .unwrap_or_else(|| cfg.server.listen.clone());
    let admin_listen = overrides
        .admin_listen
        .unwrap_or_else(|| cfg.server.admin_listen.clone());
    check_listen("listen", &listen)?;
    check_listen("admin_listen", &admin_listen)?;
    let admin_ip_loopback = admin_listen
        .parse::<SocketAddr>()
        .is_ok_and(|a| a.ip().is_loopback());
    if !admin_ip_loopback && table.admin_token.is_none() {
        return Err(format!(
            "admin_listen {admin_listen} is not a loopback address: set server.admin_token"
        ));
    }

    let threads = cfg.server.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(4)
    });
    let conf = ServerConf {
        threads,
        // Measured on one pinned core (docs/performance.md): stealing between the worker
        // threads only pays off when there is more than one.
        work_stealing: cfg.server.work_stealing.unwrap_or(threads > 1),
        // Draining is done by `Signals` below; Pingora's own grace sleep would only delay exit.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let connector = Connector::new(Some(ConnectorOptions::from_server_conf(
        &server.configuration,
    )));
    let mut state = GatewayState::new(table, connector);
    let otlp = match cfg
        .telemetry
        .otlp_endpoint
        .as_deref()
        .filter(|e| !e.is_empty())
    {
        Some(endpoint) => Some(crate::otlp::Exporter::new(
            endpoint,
            &cfg.telemetry.service_name,
        )?),
        None => None,
    };
    state.otlp = otlp.clone();
    state.ledger = crate::budget::Ledger::new(cfg.state.lease_fraction);
    state.fleet = crate::fleet::Fleet::from_config(&cfg.state);
    let state = Arc::new(state);

    let mut proxy = crate::proxy::app::service(
        "llmux gateway",
        Gateway {
            state: state.clone(),
        },
    );
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    let reloader = Arc::new(Reloader::new(config_path.to_path_buf(), state.clone()));
    let mut admin = crate::proxy::app::service(
        "llmux admin",
        Admin {
            state: state.clone(),
            reloader: reloader.clone(),
        },
    );
    admin.threads = Some(1);
    admin.add_tcp(&admin_listen);
    server.add_service(admin);
    server.add_service(background_service("config reload", ReloadService(reloader)));
    server.add_service(background_service(
        "dashboard history",
        crate::dashboard::HistorySampler {
            state: state.clone(),
        },
    ));
    if let Some(exporter) = otlp {
        server.add_service(background_service(
            "otlp export",
            OtlpService {
                exporter,
                state: state.clone(),
                every: cfg.telemetry.metrics_interval.0,
            },
        ));
    }
    server.add_service(background_service(
        "bedrock web identity",
        crate::providers::bedrock::refresh::Refresher,
    ));
    if let Some(fleet) = state.fleet.clone() {
        server.add_service(background_service(
            "shared state sync",
            crate::fleet::FleetSync {
                state: state.clone(),
                fleet,
            },
        ));
    }
    server.add_service(background_service(
        "health probes",
        Prober {
            state: state.clone(),
        },
    ));
    log::info!(
        "llmux listening on {listen} (admin {admin_listen}) with config {}",
        config_path.display()
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals {
            state,
            grace: cfg.server.shutdown_grace.0,
        }),
    });
    Ok(())
}

/// The folder relative paths in a config file are resolved against.
pub fn config_dir(path: &Path) -> PathBuf {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Builds a routing table (and its price catalog), starting in-process fakes for `mock`
/// providers without a URL.
pub fn build_table(
    cfg: &Config,
    previous: Option<&RoutingTable>,
    config_dir: &Path,
) -> Result<RoutingTable, String> {
    let catalog = crate::routing::load_catalog(cfg, config_dir)?;
    let mut local = HashMap::new();
    for p in cfg
        .providers
        .iter()
        .filter(|p| crate::providers::runs_in_process(p))
    {
        let opts = p.mock.clone().unwrap_or_default();
        let addr = MockHost::get()?.addr_for(
            &p.name,
            mock::MockOptions {
                flavor: mock::Flavor::Openai,
                fail_rate: opts.fail_rate,
                latency_ms: opts.latency_ms,
                chunk_delay_ms: opts.chunk_delay_ms,
                fail_status: None,
            },
        )?;
        local.insert(p.name.clone(), addr);
    }
    RoutingTable::build(cfg, &local, previous, catalog)
}

/// Hosts the in-process fake providers on their own small runtime, for the life of the
/// process (so the demo needs no second command and no network).
struct MockHost {
    runtime: tokio::runtime::Runtime,
    /// Provider name → (options it was started with, address).
    running: Mutex<HashMap<String, (String, SocketAddr)>>,
}

impl MockHost {
    fn get() -> Result<&'static MockHost, String> {
        static HOST: OnceLock<Result<MockHost, String>> = OnceLock::new();
        HOST.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("llmux-mock")
                .enable_all()
                .build()
                .map(|runtime| MockHost {
                    runtime,
                    running: Mutex::new(HashMap::new()),
                })
                .map_err(|e| format!("cannot start the in-process mock runtime: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
    }

    /// The address of the fake for `name`, starting it (or restarting it with new options).
    fn addr_for(&self, name: &str, opts: mock::MockOptions) -> Result<SocketAddr, String> {
        let key = format!("{opts:?}");
        let mut running = self
            .running
            .lock()
            .map_err(|_| "mock registry poisoned".to_owned())?;
        if let Some((k, addr)) = running.get(name) {
            if *k == key {
                return Ok(*addr);
            }
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| format!("mock listener: {e}"))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("mock listener: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("mock listener: {e}"))?;
        let provider = name.to_owned();
        self.runtime.spawn(async move {
            let result = match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => mock::serve(l, opts, std::future::pending()).await,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                log::error!("in-process mock provider `{provider}` stopped: {e}");
            }
        });
        running.insert(name.to_owned(), (key, addr));
        log::info!("in-process mock provider `{name}` on http://{addr}/v1");
        Ok(addr)
    }
}

/// Reloads the config: on SIGHUP, on `POST /admin/reload`, and when the file changes (a
/// Kubernetes ConfigMap update swaps a symlink; the file is re-read, so that is seen too).
/// A config that fails validation is rejected and the old table keeps serving.
pub struct Reloader {
    path: PathBuf,
    state: Arc<GatewayState>,
    /// Hash of the file's bytes when last loaded (or rejected), to spot changes.
    last_seen: Mutex<Option<u64>>,
    /// One reload at a time.
    running: Mutex<()>,
}

impl Reloader {
    /// A reloader for the file the gateway was started with.
    pub fn new(path: PathBuf, state: Arc<GatewayState>) -> Self {
        let seen = file_hash(&path);
        Reloader {
            path,
            state,
            last_seen: Mutex::new(seen),
            running: Mutex::new(()),
        }
    }

    /// Reloads if the file's content changed since it was last seen.
    fn reload_if_changed(&self) {
        let now = file_hash(&self.path);
        let changed = match self.last_seen.lock() {
            Ok(mut seen) if now.is_some() && *seen != now => {
                *seen = now;
                true
            }
            _ => false,
        };
        if changed {
            self.log_reload("file change");
        }
    }

    fn log_reload(&self, why: &str) {
        match self.reload() {
            Ok(()) => log::info!("config reloaded from {} ({why})", self.path.display()),
            Err(e) => log::error!(
                "config reload ({why}) rejected, the previous config keeps serving:\n{e}"
            ),
        }
    }
}

impl Reload for Reloader {
    fn reload(&self) -> Result<(), String> {
        let _one = self
            .running
            .lock()
            .map_err(|_| "reload lock poisoned".to_owned())?;
        if let Ok(mut seen) = self.last_seen.lock() {
            *seen = file_hash(&self.path);
        }
        let cfg = config::load(&self.path).map_err(|e| e.to_string())?;
        if crate::fleet::Fleet::differs(self.state.fleet.as_deref(), &cfg.state) {
            log::warn!("config reload: `state:` changed; it takes effect at the next restart");
        }
        let old = self.state.table.load_full();
        let table = build_table(&cfg, Some(&old), &config_dir(&self.path))?;
        self.state.table.store(Arc::new(table));
        Ok(())
    }
}

/// A hash of the file's bytes (None when it cannot be read, e.g. mid-swap).
fn file_hash(path: &Path) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let bytes = std::fs::read(path).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}

/// How often the config file is checked for changes.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Runs the reloader: SIGHUP and the file watch.
struct ReloadService(Arc<Reloader>);

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                log::error!("cannot listen for SIGHUP ({e}); the file watch still reloads");
                None
            }
        };
        let mut tick = tokio::time::interval(WATCH_EVERY);
        loop {
            let hup_recv = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = hup_recv => {
                    let r = self.0.clone();
                    let _ = tokio::task::spawn_blocking(move || r.log_reload("SIGHUP")).await;
                }
                _ = tick.tick() => {
                    let r = self.0.clone();
                    let _ = tokio::task::spawn_blocking(move || r.reload_if_changed()).await;
                }
            }
        }
    }
}

/// Exports spans and metrics over OTLP, off the request path.
struct OtlpService {
    exporter: Arc<crate::otlp::Exporter>,
    state: Arc<GatewayState>,
    every: Duration,
}

#[async_trait]
impl BackgroundService for OtlpService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let state = self.state.clone();
        let collect = move || state.metrics.otlp_snapshot(&state.table.load().endpoints);
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        self.exporter.clone().run(self.every, collect, stop).await;
    }
}

/// SIGTERM: fail `/readyz`, wait for in-flight requests (streams included) up to the grace
/// period, then stop. SIGINT: stop now.
struct Signals {
    state: Arc<GatewayState>,
    grace: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            log::error!("cannot install signal handlers; running until killed");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => ShutdownSignal::FastShutdown,
            _ = term.recv() => {
                self.state.draining.store(true, Ordering::Release);
                let until = Instant::now() + self.grace;
                log::info!("SIGTERM: draining {} in-flight requests (up to {:?})", self.state.in_flight.load(Ordering::Acquire), self.grace);
                let drained = async {
                    while self.state.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < until {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                };
                tokio::select! {
                    _ = drained => ShutdownSignal::GracefulTerminate,
                    // A second SIGTERM (or SIGINT) means "now".
                    _ = term.recv() => ShutdownSignal::FastShutdown,
                    _ = int.recv() => ShutdownSignal::FastShutdown,
                }
            }
        }
    }
}

/// What `llmux check` verifies beyond the config file itself: that the routing table
/// builds (base URLs parse, every kind has an adapter), without starting anything.
pub fn check_table(cfg: &Config, config_dir: &Path) -> Result<(), String> {
    let local: HashMap<String, SocketAddr> = cfg
        .providers
        .iter()
        .filter(|p| crate::providers::runs_in_process(p))
        .map(|p| (p.name.clone(), SocketAddr::from(([127, 0, 0, 1], 0))))
        .collect();
    let catalog = crate::routing::load_catalog(cfg, config_dir)?;
    RoutingTable::build(cfg, &local, None, catalog).map(|_| ())
}
