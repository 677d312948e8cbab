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
    /// Load a zone's ZMK from its components: one line of 64 hex digits per component on
    /// standard input, combined by XOR. Each component's KCV is printed as it is accepted, then
    /// the ZMK's. Duplicate, all-zero and malformed components are refused. (Dual control and
    /// input without echo come with the ceremony front end.)
    ZmkImport {
        /// The zone's name.
        #[arg(long)]
        zone: String,
        /// How many components to read (1 = the clear ZMK itself; 2 or 3 for split knowledge).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=3))]
        components: u8,
    },
    /// Generate a new ZMK for a zone as fresh random components from the token's RNG, print one
    /// custodian form per component (shown one at a time on a terminal: Enter for the next),
    /// then load the combined key. Components go to the forms only, never to disk or a log.
    ZmkGenerate {
        /// The zone's name.
        #[arg(long)]
        zone: String,
        /// How many components (custodians): 2 or 3.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(2..=3))]
        components: u8,
    },
    /// Parse and check the configuration, then exit.
    CheckConfig,
    /// Walk the audit log's hash chain; name the first broken record if there is one.
    AuditVerify,
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
        Command::ZmkGenerate { zone, components } => {
            let audit = keyd::audit::Audit::open(&config.audit_path())?;
            let started = std::time::Instant::now();
            let service = keyd::open_service(&config)?;
            let mut parts: Vec<Zeroizing<[u8; 32]>> = Vec::new();
            let mut zmk = Zeroizing::new([0u8; 32]);
            for _ in 0..components {
                let mut part = Zeroizing::new([0u8; 32]);
                service.hsm().random(&mut part[..])?;
                for (z, p) in zmk.iter_mut().zip(part.iter()) {
                    *z ^= p;
                }
                parts.push(part);
            }
            let final_kcv = keyd::aes_kcv(&zmk[..]);
            let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
            for (n, part) in parts.iter().enumerate() {
                print_form(&zone, n + 1, parts.len(), part, final_kcv);
                if terminal && n + 1 < parts.len() {
                    eprintln!("Hand this form to its custodian, then press Enter for the next.");
                    let mut line = String::new();
                    std::io::stdin().lock().read_line(&mut line)?;
                    // Clear the screen so the next custodian does not see this component.
                    print!("\x1b[2J\x1b[3J\x1b[H");
                }
            }
            load_zmk(&service, &audit, &zone, &zmk, 0x0310, started)
        }
        Command::AuditVerify => {
            let path = config.audit_path();
            match keyd::audit::verify(&path) {
                Ok((records, last)) => {
                    let last: String = last.iter().map(|b| format!("{b:02x}")).collect();
                    println!(
                        "{}: {records} records, chain intact, last hash {last}",
                        path.display()
                    );
                    Ok(())
                }
                Err(broken) => Err(keyd::Error::Config(format!("{}: {broken}", path.display()))),
            }
        }
        Command::Init => {
            let audit = keyd::audit::Audit::open(&config.audit_path())?;
            let started = std::time::Instant::now();
            let hsm = keyd::open_hsm(&config)?;
            let result = hsm.create_lmk();
            operator_record(&audit, 0x0300, None, None, result.as_ref().err(), started)?;
            result?;
            eprintln!("keyd: LMK created in the token");
            Ok(())
        }
        Command::ZmkImport { zone, components } => {
            let audit = keyd::audit::Audit::open(&config.audit_path())?;
            let started = std::time::Instant::now();
            let service = keyd::open_service(&config)?;
            let mut stdin = std::io::stdin().lock();
            let mut zmk = Zeroizing::new([0u8; 32]);
            let mut seen: Vec<[u8; 3]> = Vec::new();
            for n in 1..=components {
                let mut line = Zeroizing::new(String::new());
                stdin.read_line(&mut line)?;
                let part = Zeroizing::new(decode_hex(line.trim()).ok_or_else(|| {
                    keyd::Error::BadRequest(format!("component {n}: expected 64 hex digits"))
                })?);
                if part.iter().all(|b| *b == 0) {
                    return Err(keyd::Error::BadRequest(format!(
                        "component {n} is all zeros"
                    )));
                }
                let kcv = keyd::aes_kcv(&part);
                // Equal components would cancel out (or repeat): compare by check value, which
                // is what custodians see.
                if seen.contains(&kcv) {
                    return Err(keyd::Error::BadRequest(format!(
                        "component {n} repeats an earlier one"
                    )));
                }
                seen.push(kcv);
                for (z, p) in zmk.iter_mut().zip(part.iter()) {
                    *z ^= p;
                }
                if components > 1 {
                    println!(
                        "component {n} KCV {:02X}{:02X}{:02X}",
                        kcv[0], kcv[1], kcv[2]
                    );
                }
            }
            load_zmk(&service, &audit, &zone, &zmk, 0x0301, started)
        }
        Command::Serve => {
            keyd::harden::process()?;
            // The socket is made 0660 by `bind`; the PIN file is checked with the config.
            keyd::harden::not_world_accessible(&config.store)?;
            keyd::harden::not_world_accessible(&config.audit_path())?;
            let audit = Arc::new(keyd::audit::Audit::open(&config.audit_path())?);
            keyd::selftest::run()?;
            tracing::info!(tests = ?keyd::selftest::NAMES, "known-answer self-tests passed");
            let service = keyd::open_service(&config)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let listener = keyd::bind(&config.socket)?;
                tracing::info!(socket = %config.socket.display(), "keyd listening");
                let config = Arc::new(config);
                keyd::serve(
                    listener,
                    service,
                    Arc::clone(&config),
                    Arc::clone(&audit),
                    shutdown_signal(),
                )
                .await;
                audit.flush(true)?;
                let _ = std::fs::remove_file(&config.socket);
                tracing::info!("keyd stopped");
                Ok(())
            })
        }
    }
}

/// Loads a formed ZMK into the token, records the ceremony (with the ZMK's KCV) and prints
/// the KCV for the officers to compare.
#[allow(clippy::print_stdout, reason = "the KCV is the ceremony's result")]
fn load_zmk(
    service: &keyd::Service,
    audit: &keyd::audit::Audit,
    zone: &str,
    zmk: &[u8; 32],
    opcode: u16,
    started: std::time::Instant,
) -> Result<(), keyd::Error> {
    let imported = service.zmk_import(&keyd_proto::message::ZmkImport {
        zone: zone.to_owned(),
        key: keyd_proto::Secret::new(zmk),
    });
    operator_record(
        audit,
        opcode,
        Some(zone),
        imported.as_ref().ok().map(|i| i.kcv),
        imported.as_ref().err(),
        started,
    )?;
    let info = imported?;
    println!(
        "zone {} ZMK KCV {:02X}{:02X}{:02X}",
        info.zone, info.kcv[0], info.kcv[1], info.kcv[2]
    );
    Ok(())
}

/// One custodian form: the key's name, which component, its value in groups of four, its KCV,
/// the combined key's KCV, and lines for the custodian's and the witness's signatures.
#[allow(clippy::print_stdout, reason = "the form is printed for its custodian")]
fn print_form(zone: &str, n: usize, of: usize, part: &[u8; 32], final_kcv: [u8; 3]) {
    let hex: Zeroizing<String> = Zeroizing::new(part.iter().map(|b| format!("{b:02X}")).collect());
    let groups: Vec<&str> = (0..hex.len())
        .step_by(4)
        .filter_map(|i| hex.get(i..i + 4))
        .collect();
    let kcv = keyd::aes_kcv(part);
    let rule = "=".repeat(64);
    println!("{rule}");
    println!("ZMK COMPONENT FORM");
    println!("Key:            zone master key (ZMK), zone {zone}, AES-256");
    println!("Component:      {n} of {of}");
    println!(
        "Value:          {}",
        groups.get(..8).unwrap_or_default().join(" ")
    );
    println!(
        "                {}",
        groups.get(8..).unwrap_or_default().join(" ")
    );
    println!("Component KCV:  {:02X}{:02X}{:02X}", kcv[0], kcv[1], kcv[2]);
    println!(
        "ZMK KCV:        {:02X}{:02X}{:02X}  (all components combined)",
        final_kcv[0], final_kcv[1], final_kcv[2]
    );
    println!();
    println!("Custodian:      ______________________________  Date: ____________");
    println!("Witness:        ______________________________  Date: ____________");
    println!("{rule}");
    println!("\x0c");
}

/// Records an operator command (run in-process, not over the socket) and syncs the log.
fn operator_record(
    audit: &keyd::audit::Audit,
    opcode: u16,
    subject: Option<&str>,
    kcv: Option<[u8; 3]>,
    error: Option<&keyd::Error>,
    started: std::time::Instant,
) -> Result<(), keyd::Error> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid());
    audit.record(&keyd::audit::Entry {
        peer: &format!("operator:uid:{uid}"),
        opcode,
        subject,
        kcv,
        status: error.map_or(keyd_proto::Status::OK, keyd::Error::status),
        micros: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
    });
    audit.flush(true)
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
