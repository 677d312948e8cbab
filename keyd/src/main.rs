//! The `keyd` command: run the service, initialise a token, load a zone's ZMK.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use zeroize::Zeroizing;

/// keyd: the key service of the payment platform (PKCS#11 backed, Unix socket).
#[derive(Debug, Parser)]
#[command(name = "keyd", version)]
struct Cli {
    /// The configuration file.
    #[arg(long, global = true, default_value = "/etc/keyd/keyd.toml")]
    config: PathBuf,
    /// Log debug details (never key material).
    #[arg(long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve requests on the configured socket until SIGINT or SIGTERM.
    Serve,
    /// Create the local master key (LMK) in the token. Run once per token.
    Init,
    /// Load a zone's ZMK from its clear value: 64 hex digits on standard input. (Forming it from
    /// components under dual control is the ceremony front end's job.)
    ZmkImport {
        /// The zone's name.
        #[arg(long)]
        zone: String,
    },
    /// Parse and check the configuration, then exit.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(if cli.verbose {
            tracing::Level::DEBUG
        } else {
            tracing::Level::INFO
        })
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keyd: {e}");
            ExitCode::FAILURE
        }
    }
}

#[allow(
    clippy::print_stdout,
    reason = "operator commands print their result (a KCV) on standard output"
)]
fn run(cli: Cli) -> Result<(), keyd::Error> {
    let config = keyd::Config::load(&cli.config)?;
    match cli.command {
        Command::CheckConfig => {
            eprintln!("keyd: {} is valid", cli.config.display());
            Ok(())
        }
        Command::Init => {
            let hsm = keyd::open_hsm(&config)?;
            hsm.create_lmk()?;
            eprintln!("keyd: LMK created in the token");
            Ok(())
        }
        Command::ZmkImport { zone } => {
            let service = keyd::open_service(&config)?;
            let mut line = Zeroizing::new(String::new());
            std::io::stdin().lock().read_line(&mut line)?;
            let key = Zeroizing::new(
                decode_hex(line.trim())
                    .ok_or_else(|| keyd::Error::BadRequest("expected 64 hex digits".into()))?,
            );
            let info = service.zmk_import(&keyd_proto::message::ZmkImport {
                zone,
                key: keyd_proto::Secret::new(&key),
            })?;
            println!(
                "zone {} ZMK KCV {:02X}{:02X}{:02X}",
                info.zone, info.kcv[0], info.kcv[1], info.kcv[2]
            );
            Ok(())
        }
        Command::Serve => {
            let service = keyd::open_service(&config)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let listener = keyd::bind(&config.socket)?;
                tracing::info!(socket = %config.socket.display(), "keyd listening");
                let config = Arc::new(config);
                keyd::serve(listener, service, Arc::clone(&config), shutdown_signal()).await;
                let _ = std::fs::remove_file(&config.socket);
                tracing::info!("keyd stopped");
                Ok(())
            })
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 || !text.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    (0..64)
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|p| u8::from_str_radix(p, 16).ok())
        })
        .collect()
}
