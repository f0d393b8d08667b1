use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use weft::platform::{Platform, PlatformConfig};

#[derive(Parser)]
#[command(name = "weft", version, about = "Weft: AI workflow automation backend")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run Weft embedded in one process: API, orchestrator and a SQLite file.
    Dev {
        /// Where the database and development credentials live.
        #[arg(long, default_value = ".weft", env = "WEFT_DATA_DIR")]
        data_dir: PathBuf,
        /// Port to listen on (0 picks a free one).
        #[arg(long, default_value_t = 8080, env = "WEFT_PORT")]
        port: u16,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1", env = "WEFT_HOST")]
        host: std::net::IpAddr,
        /// Internal address ranges HTTP steps may reach anyway, comma-separated
        /// (e.g. `127.0.0.0/8` to call services on this machine). By default
        /// loopback, link-local and private ranges are refused.
        #[arg(long, default_value = "", env = "WEFT_EGRESS_ALLOW")]
        egress_allow: String,
        /// Sync every commit to the disk (SQLite `synchronous=FULL`, commits
        /// grouped): nothing acknowledged is lost to a power loss.
        #[arg(long, env = "WEFT_DURABLE")]
        durable: bool,
    },
    /// Check a workflow definition file and list every problem in it.
    Validate {
        /// The JSON file (`-` for standard input).
        file: PathBuf,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Dev {
            data_dir,
            port,
            host,
            egress_allow,
            durable,
        } => match (
            weft::adapters::http::EgressPolicy::allowing(&egress_allow),
            weft::adapters::llm::LlmConfig::from_env(),
            rate_limits_from_env(),
        ) {
            (Ok(egress), Ok(llm), Ok(rate_limits)) => dev(
                data_dir,
                SocketAddr::new(host, port),
                PlatformConfig {
                    egress,
                    master_key: None,
                    llm,
                    durability: if durable {
                        weft::adapters::sqlite::Durability::Full
                    } else {
                        weft::adapters::sqlite::Durability::Normal
                    },
                    rate_limits,
                },
            ),
            (Err(e), _, _) => Err(anyhow::anyhow!("--egress-allow: {e}")),
            (_, Err(e), _) | (_, _, Err(e)) => Err(e),
        },
        Command::Validate { file } => validate(&file),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logs() {
    // Structured JSON on stderr; `WEFT_LOG` filters (e.g. `debug`, `warn`).
    tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_env("WEFT_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
}

fn dev(data_dir: PathBuf, addr: SocketAddr, config: PlatformConfig) -> anyhow::Result<ExitCode> {
    init_logs();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let mut config = config;
        let env_key = std::env::var("WEFT_MASTER_KEY").ok();
        config.master_key = Some(weft::platform::load_master_key(
            &data_dir,
            env_key.as_deref(),
        )?);
        let platform = Platform::open_with(&data_dir.join("weft.db"), config).await?;
        let key = std::env::var("WEFT_DEV_API_KEY")
            .ok()
            .filter(|k| !k.trim().is_empty());
        let creds = platform.dev_credentials(&data_dir, key).await?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        let local = listener.local_addr()?;
        print_banner(&creds, local, &data_dir);
        // The peer's address reaches the audit log.
        let app = platform
            .router()
            .into_make_service_with_connect_info::<std::net::SocketAddr>();
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `WEFT_RATE_LIMITS` (`workspace=200/400,key=100/200`: requests a second
/// and burst), or the defaults.
fn rate_limits_from_env() -> anyhow::Result<weft::domain::RateLimits> {
    match std::env::var("WEFT_RATE_LIMITS") {
        Ok(v) if !v.trim().is_empty() => weft::domain::RateLimits::parse(&v)
            .map_err(|e| anyhow::anyhow!("WEFT_RATE_LIMITS: {e}")),
        _ => Ok(weft::domain::RateLimits::default()),
    }
}

fn print_banner(
    creds: &weft::platform::DevCredentials,
    addr: SocketAddr,
    data_dir: &std::path::Path,
) {
    let base = format!("http://{addr}");
    let first = if creds.created {
        "created a development workspace"
    } else {
        "using the development workspace"
    };
    println!(
        "Weft is running at {base}  ({first} {ws}; data in {dir})\n\
         \n\
         API key (owner): {key}\n\
         \n\
         Try it:\n\
         \x20 export WEFT_URL={base} WEFT_KEY={key}\n\
         \x20 curl -s $WEFT_URL/v1/health\n\
         \x20 curl -s -H \"Authorization: Bearer $WEFT_KEY\" $WEFT_URL/v1/workflows\n",
        ws = creds.workspace_id,
        dir = data_dir.display(),
        key = creds.api_key,
    );
}

fn validate(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    let value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", file.display()))?;
    match weft::dsl::parse_workflow(&value) {
        Ok(wf) => {
            println!(
                "{}: valid ({} steps)",
                file.display(),
                weft::dsl::step_ids(&wf).len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            eprintln!("{}: {} problem(s):", file.display(), errors.len());
            for e in errors {
                eprintln!("  {e}");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}
