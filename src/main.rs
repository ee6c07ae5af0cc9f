//! The `llmux` command line (spec.md §2).

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc instead of glibc malloc: a request makes ~160 small allocations (most of them in
/// Pingora and tokio), and glibc spent ~40 k instructions per request on them, a fifth of the
/// whole. Built with lazy arena commit (`.cargo/config.toml`). Measured in
/// docs/performance.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "llmux",
    version,
    about = "An LLM gateway sidecar: one OpenAI-compatible endpoint over many providers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Config file (default: $LLMUX_CONFIG, else conf/llmux.yaml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Client listener address, overriding `server.listen`.
        #[arg(long)]
        listen: Option<String>,
        /// Admin listener address, overriding `server.admin_listen`.
        #[arg(long)]
        admin_listen: Option<String>,
    },
    /// Validate a config file; print every error with file:line:column.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run a fake provider speaking the real OpenAI, Anthropic and Gemini wire formats.
    Mock {
        #[arg(long, default_value = "127.0.0.1:9001")]
        listen: String,
        /// openai | anthropic | gemini | mistral | deepseek | qwen | azure | bedrock | all
        #[arg(long, default_value = "all")]
        flavor: String,
        /// Fraction of chat requests answered with a provider error (429 or 5xx).
        #[arg(long, default_value_t = 0.0)]
        fail_rate: f64,
        /// Delay before each response header.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Delay between stream events.
        #[arg(long, default_value_t = 0)]
        chunk_delay_ms: u64,
        /// Status of the `--fail-rate` failures (default: a random 429, 500 or 503/529).
        #[arg(long)]
        fail_status: Option<u16>,
    },
    /// Print the JSON Schema of the config file.
    Schema,
}

fn config_path(given: Option<PathBuf>) -> PathBuf {
    given
        .or_else(|| std::env::var_os("LLMUX_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("conf/llmux.yaml"))
}

fn main() -> ExitCode {
    llmux::telemetry::logging::init();
    let code = run(Cli::parse().command);
    // Buffered log lines go out before the process ends.
    log::logger().flush();
    code
}

fn run(command: Command) -> ExitCode {
    match command {
        Command::Serve {
            config,
            listen,
            admin_listen,
        } => {
            let overrides = llmux::server::ListenOverrides {
                listen,
                admin_listen,
            };
            match llmux::server::serve(&config_path(config), overrides) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    log::logger().flush();
                    eprintln!("llmux: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { config } => {
            let path = config_path(config);
            match llmux::config::load(&path)
                .map_err(|e| e.to_string())
                .and_then(|cfg| llmux::server::check_table(&cfg, &llmux::server::config_dir(&path)))
            {
                Ok(()) => {
                    println!("{}: ok", path.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Mock {
            listen,
            flavor,
            fail_rate,
            latency_ms,
            chunk_delay_ms,
            fail_status,
        } => {
            let flavor = match flavor.parse::<llmux::mock::Flavor>() {
                Ok(f) => f,
                Err(_) => {
                    eprintln!(
                        "llmux mock: unknown --flavor `{flavor}` (openai|anthropic|gemini|mistral|deepseek|qwen|azure|bedrock|all)"
                    );
                    return ExitCode::FAILURE;
                }
            };
            if !(0.0..=1.0).contains(&fail_rate) {
                eprintln!("llmux mock: --fail-rate must be between 0 and 1");
                return ExitCode::FAILURE;
            }
            if fail_status.is_some_and(|s| !(400..=599).contains(&s)) {
                eprintln!("llmux mock: --fail-status must be an HTTP error status (400..=599)");
                return ExitCode::FAILURE;
            }
            let opts = llmux::mock::MockOptions {
                flavor,
                fail_rate,
                latency_ms,
                chunk_delay_ms,
                fail_status,
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("llmux mock: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = runtime.block_on(async {
                let listener = tokio::net::TcpListener::bind(&listen).await?;
                log::info!(
                    "llmux mock ({flavor:?}) listening on http://{}",
                    listener.local_addr()?
                );
                llmux::mock::serve(listener, opts, async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    log::logger().flush();
                    eprintln!("llmux mock: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Schema => {
            println!("{:#}", llmux::config::json_schema());
            ExitCode::SUCCESS
        }
    }
}

#[cfg(test)]
mod tests {
    /// `.cargo/config.toml` builds mimalloc with lazy arena commit; without it, idle RSS
    /// doubles. Option 4 is `mi_option_arena_eager_commit` in `mi_option_e` (the bindings do
    /// not name it); its stock default is 2, its neighbours' 1.
    #[test]
    fn allocator_commits_lazily() {
        // SAFETY: mi_option_get reads mimalloc's option table.
        let get = |o| unsafe { libmimalloc_sys::mi_option_get(o) };
        assert_eq!((get(3), get(5)), (1, 1), "option indices moved");
        assert_eq!(
            get(4),
            0,
            "mimalloc was built without .cargo/config.toml's CFLAGS"
        );
    }
}
