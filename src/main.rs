//! The `jobd` binary: parses the command line and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use jobd::config::{Config, ConfigError};
use jobd::Prepared;

/// Exit code for a bad command line or config (sysexits EX_USAGE).
const EX_USAGE: u8 = 64;

#[derive(Parser)]
#[command(name = "jobd", version, about = "A gRPC worker-pool daemon")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Serve {
        /// TOML config file.
        #[arg(long, env = "JOBD_CONFIG")]
        config: Option<PathBuf>,
        /// gRPC listen address (default 127.0.0.1:50051).
        #[arg(long, env = "JOBD_LISTEN")]
        listen: Option<String>,
        /// Admin HTTP address, or "off" (default 127.0.0.1:9090).
        #[arg(long, env = "JOBD_ADMIN_LISTEN")]
        admin_listen: Option<String>,
        /// Store URL: memory:, sqlite:PATH or postgres://... (default sqlite:./jobd-data/jobd.db).
        #[arg(long, env = "JOBD_STORE")]
        store: Option<String>,
        /// Log format; the level comes from RUST_LOG (default info).
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Validate a config file and print the effective settings (TOML, or
    /// JSON with --json), environment and flags applied, secrets redacted.
    CheckConfig {
        file: PathBuf,
        /// Print JSON instead of TOML.
        #[arg(long)]
        json: bool,
        /// gRPC listen address.
        #[arg(long, env = "JOBD_LISTEN")]
        listen: Option<String>,
        /// Admin HTTP address, or "off".
        #[arg(long, env = "JOBD_ADMIN_LISTEN")]
        admin_listen: Option<String>,
        /// Store URL: memory:, sqlite:PATH or postgres://...
        #[arg(long, env = "JOBD_STORE")]
        store: Option<String>,
    },
    #[command(flatten)]
    Client(jobd::clients::cli::ClientCommand),
    /// Be a remote worker: run COMMAND once per job of the given kinds
    /// (declared handler = "remote"): payload on stdin, stdout is the result.
    Work {
        /// A kind to serve (repeatable).
        #[arg(long = "kind", required = true)]
        kinds: Vec<String>,
        /// Jobs run at once.
        #[arg(long, default_value_t = 4)]
        max_in_flight: u32,
        /// SIGTERM-to-SIGKILL wait when a job is cancelled.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        kill_grace: std::time::Duration,
        /// Result bytes kept from stdout.
        #[arg(long, default_value_t = 65536)]
        max_output_bytes: usize,
        /// The program and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
        #[command(flatten)]
        conn: jobd::clients::cli::Connection,
    },
    /// Load-test a running daemon (see README "Benchmarks").
    Bench {
        /// Daemon address.
        #[arg(long, env = "JOBD_ADDR", default_value = "http://127.0.0.1:50051")]
        addr: String,
        /// Print the rows as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        args: jobd::clients::bench::BenchArgs,
    },
}

/// The config from file, environment and flags, checked and resolved once.
fn load(
    file: Option<&PathBuf>,
    listen: Option<String>,
    admin_listen: Option<String>,
    store: Option<String>,
) -> Result<Prepared, ConfigError> {
    let mut config = match file {
        Some(f) => Config::from_file(f)?,
        None => Config::default(),
    };
    // clap already merged flags over environment; both win over the file.
    if let Some(v) = listen {
        config.listen = v;
    }
    if let Some(v) = admin_listen {
        config.admin_listen = v;
    }
    if let Some(v) = store {
        config.store.url = v;
    }
    jobd::prepare(config.with_default_kinds())
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
    // Panics go through the log too, so JSON logs stay JSON.
    jobd::panic_log::install();
}

/// Debug builds only: with `JOBD_DEBUG_PANIC` set, a thread panics at
/// start (and the daemon goes on), so a test can see a panic reach the log
/// as a log event.
fn debug_panic() {
    if cfg!(debug_assertions) && std::env::var_os("JOBD_DEBUG_PANIC").is_some() {
        let panicked = std::thread::Builder::new()
            .name("debug-panic".into())
            .spawn(|| panic!("JOBD_DEBUG_PANIC is set"))
            .map(std::thread::JoinHandle::join);
        debug_assert!(matches!(panicked, Ok(Err(_))));
    }
}

/// Blocking-pool threads `serve` runs at most.
const MAX_BLOCKING_THREADS: usize = 16;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // SIGPIPE stays ignored (Rust's default) in every command: a socket the
    // peer closed is an error to report, not a silent death. The printing
    // commands end quietly on a closed stdout through jobd::clients::cli::emit.
    match cli.command {
        Command::Bench { addr, json, args } => bench(&addr, json, &args),
        Command::Work {
            conn,
            kinds,
            max_in_flight,
            kill_grace,
            max_output_bytes,
            command,
        } => {
            let mut opts = jobd::clients::worker::WorkerOptions::new(&conn.addr, kinds);
            opts.max_in_flight = max_in_flight;
            opts.token = conn.token.clone();
            work(opts, &conn, command, kill_grace, max_output_bytes)
        }
        Command::Client(cmd) => client(cmd),
        Command::CheckConfig {
            file,
            json,
            listen,
            admin_listen,
            store,
        } => check_config(load(Some(&file), listen, admin_listen, store), json),
        Command::Serve {
            config,
            listen,
            admin_listen,
            store,
            log_format,
        } => {
            init_logs(log_format);
            debug_panic();
            serve_command(load(config.as_ref(), listen, admin_listen, store))
        }
    }
}

/// The runtime a command runs on, or the exit code after saying why there
/// is none.
fn runtime(
    built: std::io::Result<tokio::runtime::Runtime>,
) -> Result<tokio::runtime::Runtime, ExitCode> {
    built.map_err(|e| {
        eprintln!("jobd: cannot start runtime: {e}");
        ExitCode::FAILURE
    })
}

/// `jobd bench`: the rows as a table, or JSON.
fn bench(addr: &str, json: bool, args: &jobd::clients::bench::BenchArgs) -> ExitCode {
    let rt = match runtime(tokio::runtime::Runtime::new()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(jobd::clients::bench::run(args, addr)) {
        Ok(rows) => {
            if json {
                println!("{}", jobd::clients::bench::to_json(&rows));
            } else {
                jobd::clients::bench::print_table(&rows);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("jobd bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `jobd work`: a remote worker running `command` per job until a signal.
fn work(
    mut opts: jobd::clients::worker::WorkerOptions,
    conn: &jobd::clients::cli::Connection,
    command: Vec<String>,
    kill_grace: std::time::Duration,
    max_output_bytes: usize,
) -> ExitCode {
    init_logs(LogFormat::Text);
    let rt = match runtime(tokio::runtime::Runtime::new()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    opts.endpoint = match conn.endpoint() {
        Ok(e) => Some(e),
        Err(e) => {
            eprintln!("jobd work: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let r = rt.block_on(async {
        let shutdown = jobd::Shutdown::on_signals()
            .map_err(|e| jobd::clients::worker::WorkerError::Options(e.to_string()))?;
        jobd::clients::worker::serve_command(
            opts,
            shutdown.drain,
            command,
            kill_grace,
            max_output_bytes,
        )
        .await
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jobd work: {e}");
            ExitCode::from(EX_USAGE)
        }
    }
}

/// The client commands (`submit`, `status`, ...), on one thread.
fn client(cmd: jobd::clients::cli::ClientCommand) -> ExitCode {
    let built = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    match runtime(built) {
        Ok(rt) => ExitCode::from(rt.block_on(jobd::clients::cli::run(cmd))),
        Err(code) => code,
    }
}

/// `jobd check-config`: the warnings on stderr, the effective config on
/// stdout; a bad config exits 64.
fn check_config(loaded: Result<Prepared, ConfigError>, json: bool) -> ExitCode {
    let prepared = match loaded {
        Ok(p) => p,
        Err(e) => {
            eprintln!("jobd: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    for warning in prepared.warnings() {
        eprintln!("jobd: warning: {warning}");
    }
    let text = if json {
        serde_json::to_string_pretty(&prepared.config).map_err(|e| e.to_string())
    } else {
        toml::to_string(&prepared.config).map_err(|e| e.to_string())
    };
    match text {
        Ok(t) => {
            jobd::clients::cli::emit(format_args!("{t}"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("jobd: cannot print the config: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `jobd serve`: a bad config exits 64 before any port is bound.
fn serve_command(loaded: Result<Prepared, ConfigError>) -> ExitCode {
    let prepared = match loaded {
        Ok(p) => p,
        Err(e) => {
            eprintln!("jobd: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let built = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Blocking threads (SQLite reads, DNS for http kinds) at
        // most: a pool that only grows under load (a read's thread
        // returns to the pool just after the next read wants one)
        // reached 21 threads with 10,000 watch starts on 2 busy
        // cores; past the cap, work waits for a thread.
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build();
    let rt = match runtime(built) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(serve(prepared)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jobd: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(prepared: Prepared) -> Result<(), Box<dyn std::error::Error>> {
    let addr = prepared.config.listen_addr()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let shutdown = jobd::Shutdown::on_signals()?;
    jobd::run(prepared, listener, shutdown).await?;
    Ok(())
}
