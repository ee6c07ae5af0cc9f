//! Assembles the Pingora server: the client listener, config reload on SIGHUP, the
//! in-process fake providers of `kind: mock`, and a draining shutdown on SIGTERM.

use crate::config::{self, Config, ProviderKind};
use crate::mock;
use crate::proxy::{Gateway, GatewayState};
use crate::routing::RoutingTable;
use async_trait::async_trait;
use pingora::connectors::http::Connector;
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

/// Runs the gateway until SIGTERM (drain, then exit) or SIGINT (exit now).
pub fn serve(config_path: &Path, listen_override: Option<String>) -> Result<(), String> {
    let cfg = config::load(config_path).map_err(|e| e.to_string())?;
    let table = build_table(&cfg)?;
    let listen = listen_override.unwrap_or_else(|| cfg.server.listen.clone());
    listen
        .parse::<SocketAddr>()
        .map_err(|e| format!("listen address `{listen}`: {e}"))?;
    // Fail early and clearly if the port is taken (Pingora would only log it).
    std::net::TcpListener::bind(&listen).map_err(|e| format!("cannot listen on {listen}: {e}"))?;

    let conf = ServerConf {
        threads: std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(4),
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
    let state = Arc::new(GatewayState::new(table, connector));

    let mut proxy = pingora::proxy::http_proxy_service(
        &server.configuration,
        Gateway {
            state: state.clone(),
        },
    );
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.add_service(background_service(
        "config reload",
        Reloader {
            path: config_path.to_path_buf(),
            state: state.clone(),
        },
    ));
    log::info!(
        "llmux listening on {listen} with config {}",
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

/// Builds a routing table, starting in-process fakes for `mock` providers without a URL.
pub fn build_table(cfg: &Config) -> Result<RoutingTable, String> {
    let mut local = HashMap::new();
    for p in cfg
        .providers
        .iter()
        .filter(|p| p.kind == ProviderKind::Mock && p.base_url.is_none())
    {
        let opts = p.mock.clone().unwrap_or_default();
        let addr = MockHost::get()?.addr_for(
            &p.name,
            mock::MockOptions {
                flavor: mock::Flavor::Openai,
                fail_rate: opts.fail_rate,
                latency_ms: opts.latency_ms,
                chunk_delay_ms: opts.chunk_delay_ms,
            },
        )?;
        local.insert(p.name.clone(), addr);
    }
    RoutingTable::build(cfg, &local)
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

/// Reloads the config on SIGHUP; a config that fails validation is rejected and the old
/// table keeps serving.
struct Reloader {
    path: PathBuf,
    state: Arc<GatewayState>,
}

impl Reloader {
    /// Loads, validates and swaps in a new routing table.
    fn reload(&self) -> Result<(), String> {
        let cfg = config::load(&self.path).map_err(|e| e.to_string())?;
        let table = build_table(&cfg)?;
        self.state.table.store(Arc::new(table));
        Ok(())
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot listen for SIGHUP, config reload disabled: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = hup.recv() => match self.reload() {
                    Ok(()) => log::info!("config reloaded from {}", self.path.display()),
                    Err(e) => log::error!("config reload rejected, the previous config keeps serving:\n{e}"),
                },
            }
        }
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
                while self.state.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                ShutdownSignal::GracefulTerminate
            }
        }
    }
}

/// What `llmux check` verifies beyond the config file itself: that the routing table
/// builds (base URLs parse, every kind has an adapter), without starting anything.
pub fn check_table(cfg: &Config) -> Result<(), String> {
    let local: HashMap<String, SocketAddr> = cfg
        .providers
        .iter()
        .filter(|p| p.kind == ProviderKind::Mock && p.base_url.is_none())
        .map(|p| (p.name.clone(), SocketAddr::from(([127, 0, 0, 1], 0))))
        .collect();
    RoutingTable::build(cfg, &local).map(|_| ())
}
