//! `acquirer-sim`: the acquirer host simulator on the command line.
//!
//! Prints `listening on ADDR` as its first line on standard output (so a script that asked for
//! port 0 learns the port), logs one line per request on standard error (MTI, STAN, DE 39, what
//! became of the answer; never a PAN, PIN block or key), and on Ctrl-C prints its counters and
//! exits.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use acqlink::Stan;
use acqsim::{Config, FileConfig, Keys, Simulator};
use clap::Parser;

/// An acquirer host for the platform's ISO 8583 link (test keys, section 8 outcomes, faults).
#[derive(Debug, Parser)]
#[command(name = "acquirer-sim", version)]
struct Cli {
    /// A TOML file (see the `acqsim::config` docs); the flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on (port 0: any free port).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Zone PIN key, 32 hex characters (default: the built-in test ZPK). Needs --zak and --pvk.
    #[arg(long, requires_all = ["zak", "pvk"])]
    zpk: Option<String>,
    /// Zone MAC key, 32 hex characters.
    #[arg(long, requires_all = ["zpk", "pvk"])]
    zak: Option<String>,
    /// PIN verification key, 32 hex characters.
    #[arg(long, requires_all = ["zpk", "zak"])]
    pvk: Option<String>,
    /// Wait this many milliseconds before every answer.
    #[arg(long)]
    latency_ms: Option<u64>,
    /// Never answer requests with this STAN (repeatable).
    #[arg(long, value_name = "STAN")]
    drop_stan: Vec<u32>,
    /// Never answer the next N requests.
    #[arg(long, value_name = "N")]
    drop_next: Option<u32>,
    /// Leave each request unanswered with this probability (0.0-1.0).
    #[arg(long, value_name = "F")]
    drop_fraction: Option<f64>,
    /// Answer requests with this STAN with a wrong MAC (repeatable).
    #[arg(long, value_name = "STAN")]
    bad_mac_stan: Vec<u32>,
    /// Answer the next N requests with a wrong MAC.
    #[arg(long, value_name = "N")]
    bad_mac_next: Option<u32>,
    /// Close the connection of each of the next N requests instead of answering.
    #[arg(long, value_name = "N")]
    close_next: Option<u32>,
    /// Block a card's PIN after N consecutive wrong PINs (answers 75 from then on).
    #[arg(long, value_name = "N")]
    pin_try_limit: Option<u32>,
    /// Seed of the drop-fraction generator.
    #[arg(long)]
    seed: Option<u64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("acquirer-sim: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let config = config(cli)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let sim = Simulator::start(config).await?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}", sim.addr())?;
        out.flush()?;
        drop(out);
        tokio::signal::ctrl_c().await?;
        let c = sim.counters();
        eprintln!(
            "acquirer-sim: received {}, answered {}, dropped {}, bad MAC sent {}, MAC failures \
             {}, malformed {}, connections {} (closed by host {}), reversals {}",
            c.received,
            c.answered,
            c.dropped,
            c.bad_mac,
            c.mac_failures,
            c.malformed,
            c.connections,
            c.closed,
            sim.reversals().len()
        );
        Ok(())
    })
}

/// The file's configuration (or the defaults), then the flags over it.
fn config(cli: Cli) -> Result<Config, Box<dyn std::error::Error>> {
    let mut config = match &cli.config {
        Some(path) => FileConfig::load(path)?.into_config()?,
        None => Config::default(),
    };
    if let Some(listen) = cli.listen {
        config.listen = listen;
    }
    if let (Some(zpk), Some(zak), Some(pvk)) = (&cli.zpk, &cli.zak, &cli.pvk) {
        config.keys = Keys::from_hex(zpk, zak, pvk)?;
    }
    if let Some(seed) = cli.seed {
        config.seed = seed;
    }
    if cli.pin_try_limit.is_some() {
        config.pin_try_limit = cli.pin_try_limit;
    }
    let f = &mut config.faults;
    if let Some(ms) = cli.latency_ms {
        f.latency = Duration::from_millis(ms);
    }
    for n in cli.drop_stan {
        f.drop_stans.insert(Stan::new(n)?);
    }
    for n in cli.bad_mac_stan {
        f.bad_mac_stans.insert(Stan::new(n)?);
    }
    if let Some(n) = cli.drop_next {
        f.drop_next = n;
    }
    if let Some(fraction) = cli.drop_fraction {
        if !(0.0..=1.0).contains(&fraction) {
            return Err("--drop-fraction is 0.0 to 1.0".into());
        }
        f.drop_fraction = fraction;
    }
    if let Some(n) = cli.bad_mac_next {
        f.bad_mac_next = n;
    }
    if let Some(n) = cli.close_next {
        f.close_next = n;
    }
    Ok(config)
}
