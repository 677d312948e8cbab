//! The `api` command: serve the REST platform.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The VioPay REST API.
#[derive(Debug, Parser)]
#[command(
    name = "api",
    version,
    after_help = "Examples:\n  api --config /etc/viopay/api.toml\n  \
                  api --config /etc/viopay/api.toml token --sub ops@example.com --role platform_admin"
)]
struct Cli {
    /// The configuration file.
    #[arg(long, default_value = "/etc/viopay/api.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Print a bearer token signed by the embedded issuer, so a fresh install can be driven
    /// (platform_admin) or a linked user acts (any role). Needs read access to the signing key.
    Token {
        /// The token's subject (a user's idp_subject, or any name for a platform admin).
        #[arg(long)]
        sub: String,
        /// platform_admin, reseller_admin, merchant_admin or merchant_user.
        #[arg(long, default_value = "platform_admin")]
        role: String,
    },
    /// Check the backoffice audit trail's keyed hash chain (every MAC through keyd, no hole,
    /// the head at the end) and print its length and last MAC, to record elsewhere. Exit 1 on
    /// the first broken entry. On SQLite, stop the API first; on PostgreSQL, any time.
    AuditVerify,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Colours only on a terminal: journald and log files get plain text an operator can grep.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("api: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<(), Box<dyn std::error::Error>> {
    let config = api::Config::load(&cli.config)?;
    if let Some(Command::Token { sub, role }) = &cli.command {
        if api::domain::model::Role::parse(role).is_none() {
            return Err(format!("unknown role {role:?}").into());
        }
        if config.auth.mode != api::config::AuthMode::Embedded {
            return Err(
                "tokens are minted only in embedded mode; in keycloak mode the realm \
                        issues them"
                    .into(),
            );
        }
        let auth = api::auth::Auth::new(&config.auth)?;
        let (token, _) = auth
            .mint(sub, &[role.as_str()], api::wire::time::now(), None)
            .map_err(|e| e.message().to_owned())?;
        let mut out = std::io::stdout().lock();
        std::io::Write::write_all(&mut out, format!("{token}\n").as_bytes())?;
        return Ok(());
    }
    if let Some(Command::AuditVerify) = &cli.command {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let v = runtime.block_on(api::app::verify_audit(&config))?;
        let mut out = std::io::stdout().lock();
        std::io::Write::write_all(
            &mut out,
            format!(
                "audit trail: {} entries, chain intact, last MAC {}; {} not linked yet\n",
                v.count, v.mac, v.unlinked
            )
            .as_bytes(),
        )?;
        return Ok(());
    }
    let tls = api::http::tls_acceptor(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // Signal handlers before the port opens: whoever sees the port may send SIGTERM, and
        // it must stop the server cleanly, not kill it.
        let shutdown = shutdown_signal()?;
        // The port first, so a port in use fails the start before the database is touched;
        // connections wait in the listen queue until the services are open. "listening" is
        // said only then: whoever waits for it (an orchestrator, a test, `api token`) may rely
        // on the store and the signing key being there.
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let (listen, https) = (config.listen, tls.is_some());
        let app = Arc::new(api::request::Services::open(config).await?);
        // This start is on record before it makes a charge (see charges::recovery).
        api::domain::charges::recovery::register(&app.charges)
            .await
            .map_err(|e| e.message().to_owned())?;
        tracing::info!(%listen, https, "api listening");
        tokio::spawn(api::housekeeping::run(Arc::clone(&app)));
        tokio::spawn(api::webhooks::run(Arc::clone(&app)));
        api::http::serve(app, listener, tls, shutdown).await;
        tracing::info!("api stopped");
        Ok(())
    })
}

/// SIGTERM or SIGINT, with both handlers installed now.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}
