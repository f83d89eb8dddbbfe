//! The `herald` command: `serve`, `migrate`, `openapi`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use herald::config::{Config, Layer, LogFormat};

/// jemalloc instead of glibc's malloc: it keeps no header inside a block, so the untouched
/// part of a large buffer (hyper's 8 KiB connection buffers, mostly empty on an idle stream)
/// stays out of RSS. See docs/performance.md.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "herald", version, about = "Self-hosted multi-tenant real-time push server")]
struct Cli {
    /// TOML config file (also HERALD_CONFIG). Environment and flags override it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a Herald node (runs pending migrations first).
    Serve(NodeArgs),
    /// Apply database migrations and exit.
    Migrate(NodeArgs),
    /// Print the OpenAPI description of the REST API.
    Openapi,
}

#[derive(Args, Default)]
struct NodeArgs {
    /// Address to listen on [default: 127.0.0.1:8080; port 0 picks a free port].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Directory for the SQLite database and the generated secret key [default: ./data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// sqlite:PATH or postgres://USER:PASSWORD@HOST/DB [default: SQLite in the data dir].
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// Log filter, e.g. info or herald=debug [default: info].
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Largest accepted request body in bytes [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    max_body_bytes: Option<String>,
    /// This node's name in cluster views [default: generated].
    #[arg(long, value_name = "NAME")]
    node_id: Option<String>,
    /// NATS server for cluster mode, e.g. nats://127.0.0.1:4222 [default: none, single node].
    #[arg(long, value_name = "URL")]
    nats_url: Option<String>,
    /// PEM certificate chain for HTTPS on the listening port (with --tls-key) [default: none, plain HTTP].
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
}

impl NodeArgs {
    fn into_layer(self) -> Layer {
        let mut layer = Layer::default();
        layer.set("listen", self.listen);
        layer.set("data_dir", self.data_dir.map(|d| d.display().to_string()));
        layer.set("database_url", self.database_url);
        layer.set("log_format", self.log_format);
        layer.set("log_level", self.log_level);
        layer.set("max_body_bytes", self.max_body_bytes);
        layer.set("node_id", self.node_id);
        layer.set("nats_url", self.nats_url);
        layer.set("tls_cert", self.tls_cert.map(|p| p.display().to_string()));
        layer.set("tls_key", self.tls_key.map(|p| p.display().to_string()));
        layer
    }
}

fn load_config(file: Option<PathBuf>, flags: NodeArgs) -> Result<(Config, Vec<String>), String> {
    let file = file.or_else(|| std::env::var_os("HERALD_CONFIG").map(PathBuf::from));
    let file_layer = match file {
        Some(path) => Layer::from_file(&path).map_err(|e| e.to_string())?,
        None => Layer::default(),
    };
    let (env_layer, unknown) = Layer::from_env(std::env::vars());
    let config = Config::resolve(&file_layer, &env_layer, &flags.into_layer()).map_err(|e| e.to_string())?;
    Ok((config, unknown))
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| "info".into());
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (flags, serve) = match cli.command {
        Command::Openapi => {
            println!("{}", herald::api::service().spec());
            return ExitCode::SUCCESS;
        }
        Command::Serve(flags) => (flags, true),
        Command::Migrate(flags) => (flags, false),
    };
    let (config, unknown_env) = match load_config(cli.config, flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("herald: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    for name in unknown_env {
        tracing::warn!(variable = %name, "ignoring unknown HERALD_* environment variable");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(run(config, serve)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config, serve: bool) -> Result<(), Box<dyn std::error::Error>> {
    tracing::info!(?config, "starting");
    let (listen, backlog) = (config.listen, config.listen_backlog);
    let tls_files = config.tls.clone();
    let boot = herald::state::bootstrap(config, serve).await?;
    if !serve {
        println!("migrations applied");
        return Ok(());
    }
    if let Some(token) = &boot.generated_admin_token {
        println!("Generated admin token (shown once; set HERALD_ADMIN_TOKEN to choose your own): {token}");
    }
    let listener =
        herald::listener::bind(listen, backlog).map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    // The pair was checked with the configuration; it is loaded again here, and from now on
    // reloaded on SIGHUP and when its files change.
    let tls = match tls_files {
        Some(files) => {
            let tls = std::sync::Arc::new(herald::tls::Tls::new(files)?);
            tls.watch();
            Some(tls)
        }
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    // Tests and scripts read this line to learn the port when listening on port 0.
    println!("Herald listening on {scheme}://{addr}");
    tracing::info!(%addr, scheme, database = boot.state.store.backend_name(), "listening");
    let acceptor = tls.as_ref().map(|t| t.acceptor());
    herald::server::serve(boot.state, listener, acceptor, herald::server::shutdown_signal()).await?;
    Ok(())
}
