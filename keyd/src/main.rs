//! The `keyd` command: run the service, and the security officers' commands (initialise a
//! token, enrol officers, form or generate a ZMK under dual control, list, disable, enable,
//! destroy and restore keys).

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use keyd::audit::{self, Audit};
use keyd::officers::{Action, Officers, Password};
use keyd_proto::message::Operation as _;
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
    /// Create the local master key (LMK) in the token and enrol the first officers. Run once
    /// per token. With dual control on, name at least two officers; each one's password is
    /// asked for (twice, without echo, on a terminal; one line each on standard input
    /// otherwise) before anything is created.
    Init {
        /// An officer to enrol (repeat: at least two with dual control on).
        #[arg(long = "officer")]
        officers: Vec<String>,
        /// Form the LMK from 2 or 3 components (typed after the passwords, as for a ZMK)
        /// instead of generating it in the token: a second token formed from the same
        /// components opens the same key store.
        #[arg(long, value_parser = clap::value_parser!(u8).range(2..=3))]
        lmk_components: Option<u8>,
    },
    /// Enrol another officer, approved by two existing officers.
    OfficerAdd {
        /// The new officer's name.
        #[arg(long)]
        officer: String,
        /// An approving officer (repeat; two distinct officers in all, counting approvals
        /// given earlier with `approve`).
        #[arg(long = "approver")]
        approvers: Vec<String>,
    },
    /// List the officers (never their credentials).
    Officers,
    /// Change an officer's password (the current one first, then the new one).
    OfficerPasswd {
        /// The officer.
        #[arg(long)]
        officer: String,
    },
    /// Record one officer's approval of one controlled action (valid for the configured
    /// window). A second officer approves with this command too, or while running the action.
    Approve {
        /// The approving officer (asked for their password).
        #[arg(long)]
        officer: String,
        /// `zmk-form`, `export`, `destroy`, `officer-add`, `lmk-rotate`, `lmk-destroy`,
        /// `zmk-rotate` or `zmk-retire`.
        #[arg(long)]
        action: String,
        /// The zone (`zmk-form`, `export`), key id (`destroy`), officer name (`officer-add`),
        /// `lmk` (`lmk-rotate`), a retired LMK's KCV (`lmk-destroy`) or the zone
        /// (`zmk-rotate`, `zmk-retire`).
        #[arg(long)]
        subject: String,
    },
    /// Give a zone a new ZMK (dual control: `zmk-rotate <zone>`), formed from typed components
    /// (`--components`) or generated as custodian forms (`--generate`), of the zone's own
    /// algorithm (a TDES zone stays TDES, an AES zone AES). Every key-set delivery uses it at
    /// once; the old ZMK is kept until every device of the zone has fetched its keys since, or
    /// the officers retire it (`zmk-retire`; a TDES zone has no devices, so its rotation ends
    /// there).
    ZmkRotate {
        /// The zone.
        #[arg(long)]
        zone: String,
        /// Form it from 2 or 3 typed components.
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=3), conflicts_with = "generate")]
        components: Option<u8>,
        /// Generate it as 2 or 3 components printed on custodian forms.
        #[arg(long, value_parser = clap::value_parser!(u8).range(2..=3))]
        generate: Option<u8>,
        /// An approving officer (repeat; two distinct officers in all).
        #[arg(long = "approver")]
        approvers: Vec<String>,
    },
    /// The devices of a zone whose TMK was not delivered under its current ZMK yet, one per
    /// line (during a ZMK rotation: those still to fetch their keys).
    ZmkDevices {
        /// The zone.
        #[arg(long)]
        zone: String,
    },
    /// End a zone's ZMK rotation before every device has moved (dual control: `zmk-retire
    /// <zone>`): the old ZMK is destroyed in every node's token.
    ZmkRetire {
        /// The zone.
        #[arg(long)]
        zone: String,
        /// An approving officer (repeat; two distinct officers in all).
        #[arg(long = "approver")]
        approvers: Vec<String>,
    },
    /// Begin an LMK rotation on this node (dual control: `lmk-rotate lmk`): a new LMK is
    /// generated in the token, or formed from 2 or 3 components as `init --lmk-components`
    /// reads them, and recorded as pending. On every further keyd node sharing the store run it
    /// again with the same components (checked against the pending LMK's KCV). Then
    /// `lmk-rewrap` (or `--rewrap` here, for a single node) moves every stored block to it.
    LmkRotate {
        /// Form the new LMK from 2 or 3 components (required with several nodes, and on every
        /// node after the first).
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=3))]
        components: Option<u8>,
        /// An approving officer (repeat; two distinct officers in all).
        #[arg(long = "approver")]
        approvers: Vec<String>,
        /// Run the rewrap at once (a single keyd node: no other token needs the new LMK).
        #[arg(long)]
        rewrap: bool,
        /// Blocks re-sealed per store transaction.
        #[arg(long, default_value_t = 500)]
        batch: usize,
    },
    /// Move every stored block to the LMK a rotation is to, in batches, while `keyd serve`
    /// keeps serving; then switch to it. Run it again to resume after an interruption. The old
    /// LMK stays in the tokens for `officers.lmk_restore_window_secs`.
    LmkRewrap {
        /// The officer running it (the rotation itself was approved by two).
        #[arg(long)]
        officer: Option<String>,
        /// Blocks re-sealed per store transaction.
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// Tests only: stop (sleep until killed) once this many blocks were moved.
        #[arg(long, hide = true)]
        test_pause_after: Option<usize>,
    },
    /// Destroy a retired LMK before its restore window ends (dual control: `lmk-destroy
    /// <KCV>`); refused while any block is still sealed under it. keyd serve destroys it by
    /// itself when the window ends.
    LmkDestroy {
        /// The retired LMK's check value (6 hex digits, `keyd lmks` shows it).
        #[arg(long)]
        kcv: String,
        /// An approving officer (repeat; two distinct officers in all).
        #[arg(long = "approver")]
        approvers: Vec<String>,
    },
    /// The LMKs since the first rotation: check value, state, and whether this token holds it.
    Lmks {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Form a zone's ZMK from 2 or 3 components combined by XOR: 64 hex digits each for an
    /// AES-256 ZMK, 32 for a double-length TDES one (`--algorithm tdes`, for a partner that
    /// exchanges keys as TR-31 version B blocks). Typed without echo on a terminal, or one per
    /// line on standard input. Each component's KCV is printed as it is accepted, then the
    /// ZMK's (the legacy TDES KCV for TDES). Duplicate, all-zero and malformed components are
    /// refused. Needs two officers' approval (`--approver` twice, or `approve`).
    ZmkImport {
        /// The zone's name.
        #[arg(long)]
        zone: String,
        /// How many components (2 or 3; 1, the clear ZMK, only with dual control off).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=3))]
        components: u8,
        /// The ZMK's algorithm: `aes` (AES-256, the default; device zones are AES) or `tdes`
        /// (double-length TDES). The components must have its length.
        #[arg(long, default_value = "aes", value_parser = ["aes", "tdes"])]
        algorithm: String,
        /// An approving officer (repeat).
        #[arg(long = "approver")]
        approvers: Vec<String>,
    },
    /// Generate a new ZMK for a zone as fresh random components from the token's RNG, print one
    /// custodian form per component (shown one at a time on a terminal: Enter for the next),
    /// then load the combined key. Components go to the forms only, never to disk or a log.
    /// Needs two officers' approval.
    ZmkGenerate {
        /// The zone's name.
        #[arg(long)]
        zone: String,
        /// How many components (custodians): 2 or 3.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(2..=3))]
        components: u8,
        /// The ZMK's algorithm: `aes` (AES-256, the default) or `tdes` (double-length TDES,
        /// odd-parity components).
        #[arg(long, default_value = "aes", value_parser = ["aes", "tdes"])]
        algorithm: String,
        /// An approving officer (repeat).
        #[arg(long = "approver")]
        approvers: Vec<String>,
    },
    /// List stored keys: id, label, kind, TR-31 usage/algorithm/mode/exportability, KCV,
    /// created, state. Never key values.
    Keys {
        /// Only this device's keys.
        #[arg(long)]
        device: Option<String>,
        /// Only keys in this state: active, disabled, destroying, destroyed.
        #[arg(long)]
        state: Option<String>,
        /// Continue after this key id (the last one of the previous page).
        #[arg(long, default_value = "")]
        after: String,
        /// Page size.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
        /// Only keys made longer ago than this (`90d`, `12h`, `2y`; units s, m, h, d, y): those
        /// past a crypto-period.
        #[arg(long, value_parser = age)]
        older_than: Option<u64>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The crypto-period report for assessors: keys still in use by type (device key kind, or
    /// a partner key's TR-31 usage) and age (under 30 days, 30-90 days, 90 days to a year, a
    /// year or more), with the oldest of each.
    CryptoPeriods {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the zones with their ZMK algorithms and check values, and the LMK's.
    Zones {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Disable a key: every use and export is refused until it is enabled (one officer).
    KeyDisable {
        /// The key.
        key_id: String,
        /// The officer doing it.
        #[arg(long)]
        officer: Option<String>,
    },
    /// Enable a disabled key (one officer).
    KeyEnable {
        /// The key.
        key_id: String,
        /// The officer doing it.
        #[arg(long)]
        officer: Option<String>,
    },
    /// Destroy a key: refused at once, erased when the restore window ends. Needs two
    /// officers' approval.
    KeyDestroy {
        /// The key.
        key_id: String,
        /// An approving officer (repeat).
        #[arg(long = "approver")]
        approvers: Vec<String>,
    },
    /// Take back a destruction within the restore window; the key comes back disabled (one
    /// officer).
    KeyRestore {
        /// The key.
        key_id: String,
        /// The officer doing it.
        #[arg(long)]
        officer: Option<String>,
    },
    /// Import a key a partner delivered as a TR-31 block under a zone's ZMK (a ZPK, ZAK, PVK,
    /// BDK…; version D under an AES zone, B under a TDES zone): checked under the strict rules,
    /// stored under the LMK with a label. Prints the new key id, the header as received and the
    /// KCV (legacy form for TDES keys), for comparison with the sender's. One officer.
    Tr31Import {
        /// The zone whose ZMK wraps the block.
        #[arg(long)]
        zone: String,
        /// 1-64 printable characters, kept with the key.
        #[arg(long)]
        label: String,
        /// The officer doing it.
        #[arg(long)]
        officer: Option<String>,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// The key block; `-` reads it from standard input.
        block: String,
    },
    /// Export a stored key under a zone's ZMK: a version D block under an AES zone, version B
    /// under a TDES zone (which takes only DES and TDES keys of at most 16 bytes). Needs two
    /// officers' approval of `export` for `<key id>@<zone>`, asked for once the key is known
    /// to fit.
    Tr31Export {
        /// The key.
        #[arg(long)]
        key: String,
        /// The zone whose ZMK wraps the block.
        #[arg(long)]
        zone: String,
        /// An approving officer (repeat).
        #[arg(long = "approver")]
        approvers: Vec<String>,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Re-wrap a block from one zone's ZMK to another's, same header, in the destination's
    /// version (D for an AES zone, B for a TDES zone; a key stronger than a TDES ZMK is
    /// refused). Needs two officers' approval of `export` for `<KCV>@<to zone>`: the key is
    /// known between organisations by its KCV, which this prints before it asks for approvals.
    Tr31Translate {
        /// The zone whose ZMK wraps the block now.
        #[arg(long)]
        from_zone: String,
        /// The zone to wrap it for.
        #[arg(long)]
        to_zone: String,
        /// An approving officer (repeat).
        #[arg(long = "approver")]
        approvers: Vec<String>,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// The key block; `-` reads it from standard input.
        block: String,
    },
    /// Generate a key for a partner in the token's RNG (an AWS `CreateKey` analogue) and store
    /// it under the LMK like an imported one: the header gives usage, algorithm (`T`,
    /// double-length TDES, or `A`, AES-256), mode and exportability, e.g. `D0000P0TB00E0000`
    /// for a ZPK. Prints the new key id and KCV; `tr31-export` then sends it under the
    /// partner's zone. One officer.
    KeyGenerate {
        /// A TR-31 header (its length field is ignored).
        #[arg(long)]
        header: String,
        /// 1-64 printable characters, kept with the key.
        #[arg(long)]
        label: String,
        /// The officer doing it.
        #[arg(long)]
        officer: Option<String>,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Store the simulators' published test keys (spec 12.7): the ZPK and PVK with which the
    /// API's embedded simulator verifies PINs, and the ZAK of the acquirer host simulator's
    /// link. For test and demo installs only: the keys are public. Prints each key's id and
    /// KCV (the API's `[processor]` settings take the ids). One officer.
    SimulatorKeys {
        /// The officer doing it.
        #[arg(long)]
        officer: Option<String>,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Parse and check the configuration, then exit.
    CheckConfig,
    /// Walk the audit log's chain under the token's key; name the first broken record if there
    /// is one, and check the log against its checkpoints (a cut tail is found there).
    AuditVerify {
        /// The checkpoint file (default: `audit_checkpoints` of the config, if set).
        #[arg(long)]
        checkpoints: Option<PathBuf>,
    },
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
    reason = "operator commands print their result (a KCV, a listing) on standard output"
)]
fn run(cli: Cli) -> Result<(), keyd::Error> {
    let config = keyd::Config::load(&cli.config)?;
    // Every command that opens the token or reads a password or a component holds secrets in
    // memory: no core dump, no ptrace by others, no swap for any of them, not only for `serve`.
    if !matches!(cli.command, Command::CheckConfig) {
        keyd::harden::process()?;
    }
    match cli.command {
        Command::CheckConfig => {
            eprintln!("keyd: {} is valid", cli.config.display());
            Ok(())
        }
        Command::AuditVerify { checkpoints } => {
            let path = config.audit_path();
            let hsm = keyd::open_hsm(&config)?;
            let store = keyd::open_store(&config)?;
            let key = hsm
                .has_lmk()
                .then(|| audit::AuditKey::derive(&*hsm, &*store))
                .transpose()?;
            let verified = audit::verify(&path, key.as_ref())
                .map_err(|broken| keyd::Error::Config(format!("{}: {broken}", path.display())))?;
            let last: String = verified.last.iter().map(|b| format!("{b:02x}")).collect();
            println!(
                "{}: {} records, chain intact, last MAC {last}",
                path.display(),
                verified.records
            );
            if verified.unkeyed > 0 {
                println!(
                    "  records 1-{} are unkeyed (written before the LMK existed, or by an older keyd); \
                     the first keyed record covers them",
                    verified.unkeyed
                );
            }
            if let Some(file) = checkpoints.or_else(|| config.audit_checkpoints.clone()) {
                let (n, upto) = audit::verify_checkpoints(&path, &file, key.as_ref())
                    .map_err(keyd::Error::Config)?;
                println!(
                    "  {n} checkpoints in {} match, up to record {upto}",
                    file.display()
                );
            }
            Ok(())
        }
        Command::Init {
            officers,
            lmk_components,
        } => init(&config, &officers, lmk_components),
        Command::OfficerAdd { officer, approvers } => {
            let op = Operator::open(&config)?;
            Officers::check_name(&officer)?;
            if op
                .service
                .officers()
                .list()?
                .iter()
                .any(|o| o.name == officer)
            {
                return Err(keyd::Error::Conflict("an officer of that name exists"));
            }
            // Approvals given earlier would let whoever runs this first choose the password:
            // both approving officers are at this terminal.
            if op.service.officers().policy().dual() && approvers.len() < 2 {
                return Err(keyd::Error::BadRequest(
                    "enrolling an officer needs both approving officers here: --approver twice"
                        .into(),
                ));
            }
            let officers = op.approvals(&approvers, Action::OfficerAdd, &officer)?;
            let password = new_password(&officer)?;
            let result = op
                .service
                .officers()
                .require(Action::OfficerAdd, &officer)
                .and_then(|_| {
                    op.service
                        .officers()
                        .enrol(op.service.hsm(), &officer, &password)
                });
            let logged = op.record(
                audit::op::OFFICER_ADD,
                &officers,
                Some(&officer),
                None,
                &result,
            );
            result?;
            eprintln!("keyd: officer {officer} enrolled");
            logged
        }
        Command::OfficerPasswd { officer } => {
            let op = Operator::open(&config)?;
            let current = Password::new(keyd::console::read_secret(&format!(
                "Current password for officer {officer}"
            ))?);
            let new = new_password(&officer)?;
            let result =
                op.service
                    .officers()
                    .change_password(op.service.hsm(), &officer, &current, &new);
            let logged = op.record(
                audit::op::OFFICER_PASSWD,
                std::slice::from_ref(&officer),
                Some(&officer),
                None,
                &result,
            );
            result.map_err(|e| match e {
                keyd::Error::Auth => {
                    keyd::Error::BadRequest(format!("officer {officer}: authentication failed"))
                }
                other => other,
            })?;
            eprintln!("keyd: password of officer {officer} changed");
            logged
        }
        Command::Officers => {
            let op = Operator::open(&config)?;
            let now = keyd::unix_now();
            println!(
                "{:<24} {:<20} {:<20} STATUS",
                "OFFICER", "ENROLLED", "LAST LOGIN"
            );
            for o in op.service.officers().list()? {
                let status = match o.locked_until {
                    Some(until) if until > now => format!("locked for {} s", until - now),
                    _ if o.failures > 0 => format!("{} failed login(s)", o.failures),
                    _ => "ok".to_owned(),
                };
                println!(
                    "{:<24} {:<20} {:<20} {status}",
                    o.name,
                    utc(o.created_at),
                    o.last_login.map_or_else(|| "never".to_owned(), utc)
                );
            }
            Ok(())
        }
        Command::Approve {
            officer,
            action,
            subject,
        } => {
            let action = Action::from_name(&action).ok_or_else(|| {
                keyd::Error::BadRequest(
                    "actions are zmk-form, export, destroy and officer-add".into(),
                )
            })?;
            let op = Operator::open(&config)?;
            op.approve(&officer, action, &subject)?;
            let so_far = op.service.officers().approved_so_far(action, &subject)?;
            eprintln!(
                "keyd: {officer} approves {} {subject} for {} s; approved so far by: {}",
                action.name(),
                op.service.officers().policy().approval_window_secs,
                so_far.join(", ")
            );
            Ok(())
        }
        Command::ZmkGenerate {
            zone,
            components,
            algorithm,
            approvers,
        } => {
            let algorithm = zmk_algorithm(&algorithm)?;
            let op = Operator::open(&config)?;
            op.new_zone(&zone)?;
            let officers = op.approvals(&approvers, Action::ZmkForm, &zone)?;
            let (parts, zmk) = generate_components(&op, algorithm, components)?;
            let final_kcv = algorithm.kcv(&zmk);
            // Loaded (and the approvals used up) before any form exists: no custodian ever
            // holds a component of a key that was not made.
            let logged = op.load_zmk(&zone, &zmk, audit::op::ZMK_GENERATE, &officers)?;
            let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
            for (n, part) in parts.iter().enumerate() {
                print_form(&zone, algorithm, n + 1, parts.len(), part, final_kcv);
                if terminal && n + 1 < parts.len() {
                    eprintln!("Hand this form to its custodian, then press Enter for the next.");
                    let mut line = String::new();
                    std::io::stdin().lock().read_line(&mut line)?;
                    // Clear the screen so the next custodian does not see this component.
                    print!("\x1b[2J\x1b[3J\x1b[H");
                }
            }
            logged
        }
        Command::ZmkImport {
            zone,
            components,
            algorithm,
            approvers,
        } => {
            let algorithm = zmk_algorithm(&algorithm)?;
            let op = Operator::open(&config)?;
            if components < 2 && op.service.officers().policy().dual() {
                return Err(keyd::Error::BadRequest(
                    "a ZMK is formed from 2 or 3 components (split knowledge); one clear component is accepted only with dual control off".into(),
                ));
            }
            op.new_zone(&zone)?;
            let officers = op.approvals(&approvers, Action::ZmkForm, &zone)?;
            let zmk = read_components(&format!("zone {zone}"), components, algorithm)?;
            op.load_zmk(&zone, &zmk, audit::op::ZMK_FORM, &officers)?
        }
        Command::Keys {
            device,
            state,
            after,
            limit,
            older_than,
            json,
        } => {
            let op = Operator::open(&config)?;
            let keys = op.service.list_keys(&keyd::ListQuery {
                device: device.as_deref(),
                state: state.as_deref(),
                after: &after,
                limit: usize::try_from(limit).unwrap_or(100),
                created_before: older_than.map(|age| keyd::unix_now().saturating_sub(age)),
            })?;
            if !json {
                println!(
                    "{:<28} {:<24} {:<8} {:<10} {:<6} {:<20} STATE",
                    "KEY ID", "LABEL", "KIND", "TR-31", "KCV", "CREATED"
                );
            }
            for k in &keys {
                if json {
                    println!("{}", serde_json::to_string(k).unwrap_or_default());
                    continue;
                }
                let state = match k.erase_at {
                    Some(at) => format!("{} (erased {})", k.state, utc(at)),
                    None => k.state.clone(),
                };
                println!(
                    "{:<28} {:<24} {:<8} {:<10} {:<6} {:<20} {state}",
                    k.key_id,
                    k.label,
                    k.kind,
                    format!("{} {} {} {}", k.usage, k.algorithm, k.mode, k.exportability),
                    k.kcv,
                    utc(k.created_at)
                );
            }
            if let Some(last) = keys.last()
                && keys.len() == usize::try_from(limit).unwrap_or(usize::MAX)
            {
                eprintln!("keyd: more keys follow: --after {}", last.key_id);
            }
            Ok(())
        }
        Command::CryptoPeriods { json } => {
            let op = Operator::open(&config)?;
            let rows = op.service.crypto_periods(keyd::unix_now())?;
            if !json {
                println!(
                    "{:<10} {:>8} {:>8} {:>8} {:>8}  OLDEST",
                    "TYPE", "<30d", "30-90d", "90d-1y", ">=1y"
                );
            }
            for r in &rows {
                if json {
                    println!("{}", serde_json::to_string(r).unwrap_or_default());
                } else {
                    println!(
                        "{:<10} {:>8} {:>8} {:>8} {:>8}  {}",
                        r.key_type,
                        r.under_30_days,
                        r.under_90_days,
                        r.under_1_year,
                        r.over_1_year,
                        utc(r.oldest)
                    );
                }
            }
            Ok(())
        }
        Command::ZmkRotate {
            zone,
            components,
            generate,
            approvers,
        } => {
            let op = Operator::open(&config)?;
            if !op.service.has_zone(&zone) {
                return Err(keyd::Error::NotFound("zone"));
            }
            if components == Some(1) && op.service.officers().policy().dual() {
                return Err(keyd::Error::BadRequest(
                    "a ZMK is formed from 2 or 3 components (split knowledge); one clear \
                     component is accepted only with dual control off"
                        .into(),
                ));
            }
            // The new ZMK is of the zone's algorithm: components of its length.
            let algorithm = op.service.zone_algorithm(&zone)?;
            let officers = op.approvals(&approvers, Action::ZmkRotate, &zone)?;
            let mut parts: Vec<Zeroizing<Vec<u8>>> = Vec::new();
            let zmk = match (components, generate) {
                (Some(n), None) => {
                    read_components(&format!("zone {zone}'s new ZMK"), n, algorithm)?
                }
                (None, Some(n)) => {
                    let (made, zmk) = generate_components(&op, algorithm, n)?;
                    parts = made;
                    zmk
                }
                _ => {
                    return Err(keyd::Error::BadRequest(
                        "name --components N (typed) or --generate N (custodian forms)".into(),
                    ));
                }
            };
            let result = op.service.zmk_rotate(&keyd_proto::message::ZmkImport {
                zone: zone.clone(),
                key: keyd_proto::Secret::new(&zmk[..]),
            });
            op.record(
                audit::op::ZMK_ROTATE,
                &officers,
                Some(&zone),
                result.as_ref().ok().map(|i| i.kcv),
                &result,
            )?;
            let info = result?;
            println!("zone {} new ZMK KCV {}", info.zone, keyd::kcv_hex(info.kcv));
            let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
            for (n, part) in parts.iter().enumerate() {
                print_form(&zone, algorithm, n + 1, parts.len(), part, info.kcv);
                if terminal && n + 1 < parts.len() {
                    eprintln!("Hand this form to its custodian, then press Enter for the next.");
                    let mut line = String::new();
                    std::io::stdin().lock().read_line(&mut line)?;
                    print!("\x1b[2J\x1b[3J\x1b[H");
                }
            }
            let pending = op.service.zmk_pending_devices(&zone)?;
            eprintln!(
                "keyd: key-set deliveries in zone {zone} use the new ZMK from now on; {} devices \
                 still have their TMK under the old one (`keyd zmk-devices --zone {zone}`)",
                pending.len()
            );
            op.service.announce_change()
        }
        Command::ZmkDevices { zone } => {
            let op = Operator::open(&config)?;
            for device in op.service.zmk_pending_devices(&zone)? {
                println!("{device}");
            }
            Ok(())
        }
        Command::ZmkRetire { zone, approvers } => {
            let op = Operator::open(&config)?;
            let officers = op.approvals(&approvers, Action::ZmkRetire, &zone)?;
            let result = op.service.zmk_retire(&zone);
            op.record(
                audit::op::ZMK_RETIRE,
                &officers,
                Some(&zone),
                result.as_ref().ok().copied(),
                &result,
            )?;
            let old = result?;
            eprintln!(
                "keyd: zone {zone}'s old ZMK {} is retired and destroyed in this token; every \
                 other node destroys it within a second",
                keyd::kcv_hex(old)
            );
            Ok(())
        }
        Command::LmkRotate {
            components,
            approvers,
            rewrap,
            batch,
        } => {
            let op = Operator::open(&config)?;
            if components.is_none() && config.database.is_some() {
                return Err(keyd::Error::BadRequest(
                    "several keyd nodes share this store: form the new LMK from components \
                     (--components N) so that every node's token can hold it"
                        .into(),
                ));
            }
            if components == Some(1) && op.service.officers().policy().dual() {
                return Err(keyd::Error::BadRequest(
                    "an LMK is formed from 2 or 3 components (split knowledge); one clear \
                     component is accepted only with dual control off"
                        .into(),
                ));
            }
            let officers = op.approvals(&approvers, Action::LmkRotate, "lmk")?;
            let key = components
                .map(|n| read_components("the new LMK", n, keyd::ZmkAlgorithm::Aes))
                .transpose()?;
            let result = op.service.lmk_form(key.as_ref().map(|k| &k[..]));
            op.record(
                audit::op::LMK_FORM,
                &officers,
                Some("lmk"),
                result.as_ref().ok().map(|r| r.kcv),
                &result,
            )?;
            let formed = result?;
            println!("new LMK KCV {}", keyd::kcv_hex(formed.kcv));
            if formed.first {
                eprintln!(
                    "keyd: new LMK {} in this token, recorded pending (it replaces {}). With \
                     several keyd nodes on this store, run `keyd lmk-rotate --components N` with \
                     the same components on each of them now; then `keyd lmk-rewrap`.",
                    keyd::kcv_hex(formed.kcv),
                    keyd::kcv_hex(formed.from)
                );
            } else {
                eprintln!(
                    "keyd: this token holds the new LMK {} of the rotation under way",
                    keyd::kcv_hex(formed.kcv)
                );
            }
            op.service.announce_change()?;
            if rewrap {
                op.rewrap(&officers, batch, None)?;
            }
            Ok(())
        }
        Command::LmkRewrap {
            officer,
            batch,
            test_pause_after,
        } => {
            let op = Operator::open(&config)?;
            let officers = op.one_officer(officer.as_deref())?;
            op.rewrap(&officers, batch, test_pause_after)
        }
        Command::LmkDestroy { kcv, approvers } => {
            let op = Operator::open(&config)?;
            let bytes = hex::decode(kcv.trim())
                .ok()
                .and_then(|b| <[u8; 3]>::try_from(b.as_slice()).ok())
                .ok_or_else(|| keyd::Error::BadRequest("a KCV is 6 hex digits".into()))?;
            let officers = op.approvals(&approvers, Action::LmkDestroy, &keyd::kcv_hex(bytes))?;
            let result = op.service.lmk_destroy(bytes, true);
            op.record(
                audit::op::LMK_DESTROY,
                &officers,
                Some("lmk"),
                Some(bytes),
                &result,
            )?;
            result?;
            eprintln!(
                "keyd: LMK {} destroyed in this token and in the key store; every other node \
                 removes it from its token within a second",
                keyd::kcv_hex(bytes)
            );
            Ok(())
        }
        Command::Lmks { json } => {
            let op = Operator::open(&config)?;
            let held = op.service.hsm().lmks().0;
            for l in op.service.lmk_states() {
                let after = match l.state {
                    keyd::LmkState::Retired { destroy_after } => Some(destroy_after),
                    _ => None,
                };
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "kcv": keyd::kcv_hex(l.kcv),
                            "state": l.state.name(),
                            "original": l.original,
                            "changed_at": l.changed_at,
                            "destroy_after": after,
                            "in_this_token": held.contains(&l.kcv),
                        })
                    );
                } else {
                    println!(
                        "LMK {} {:<9} since {}{}{}{}",
                        keyd::kcv_hex(l.kcv),
                        l.state.name(),
                        utc(l.changed_at),
                        if l.original { " (original)" } else { "" },
                        after.map_or_else(String::new, |t| format!(", destroyed at {}", utc(t))),
                        if held.contains(&l.kcv) {
                            ""
                        } else {
                            ", not in this token"
                        },
                    );
                }
            }
            Ok(())
        }
        Command::Zones { json } => {
            let op = Operator::open(&config)?;
            let lmk = op.service.lmk_kcv()?;
            let zones = op.service.zone_list()?;
            if json {
                println!("{}", serde_json::json!({ "lmk_kcv": lmk }));
                for z in &zones {
                    println!("{}", serde_json::to_string(z).unwrap_or_default());
                }
            } else {
                println!("LMK KCV {lmk}");
                println!("{:<32} {:<9} ZMK KCV", "ZONE", "ALGORITHM");
                for z in &zones {
                    match &z.retiring_kcv {
                        None => println!("{:<32} {:<9} {}", z.zone, z.algorithm, z.kcv),
                        Some(old) => println!(
                            "{:<32} {:<9} {} (rotating from {old})",
                            z.zone, z.algorithm, z.kcv
                        ),
                    }
                }
            }
            Ok(())
        }
        Command::Tr31Import {
            zone,
            label,
            officer,
            json,
            block,
        } => {
            let op = Operator::open(&config)?;
            let officers = op.one_officer(officer.as_deref())?;
            let block = block_argument(&block)?;
            let header = tr31::KeyBlock::parse(&block, tr31::Profile::Strict)?.into_header();
            let result = op.service.tr31_import(&keyd_proto::message::Tr31Import {
                zone: zone.clone(),
                key_block: block,
                label: label.clone(),
            });
            let logged = op.record(
                keyd_proto::message::Tr31Import::OPCODE.0,
                &officers,
                result.as_ref().ok().map(|k| k.key_id.as_str()),
                result.as_ref().ok().map(|k| k.kcv),
                &result,
            );
            print_key(&result?, &label, Some(&zone), &header, json);
            logged
        }
        Command::KeyGenerate {
            header,
            label,
            officer,
            json,
        } => {
            let header = tr31::Header::parse(&header, tr31::Profile::Strict)?;
            let op = Operator::open(&config)?;
            let officers = op.one_officer(officer.as_deref())?;
            let result = op.service.key_generate(&header, &label);
            let logged = op.record(
                audit::op::KEY_GENERATE,
                &officers,
                result.as_ref().ok().map(|k| k.key_id.as_str()),
                result.as_ref().ok().map(|k| k.kcv),
                &result,
            );
            print_key(&result?, &label, None, &header, json);
            logged
        }
        Command::SimulatorKeys { officer, json } => {
            let op = Operator::open(&config)?;
            let officers = op.one_officer(officer.as_deref())?;
            let result = op.service.simulator_keys();
            let mut logged = Ok(());
            for (_, _, key) in result.as_deref().unwrap_or_default() {
                logged = logged.and(op.record(
                    audit::op::SIMULATOR_KEYS,
                    &officers,
                    Some(&key.key_id),
                    Some(key.kcv),
                    &result,
                ));
            }
            if result.is_err() {
                logged = op.record(audit::op::SIMULATOR_KEYS, &officers, None, None, &result);
            }
            for (label, header, key) in result? {
                print_key(&key, label, None, &header, json);
            }
            logged
        }
        Command::Tr31Export {
            key,
            zone,
            approvers,
            json,
        } => {
            let op = Operator::open(&config)?;
            let request = keyd_proto::message::Tr31Export {
                key_id: key.clone(),
                zone: zone.clone(),
            };
            // Refused before any officer is asked for a password if it cannot be sent there.
            op.service.tr31_export_check(&request)?;
            let officers = op.approvals(&approvers, Action::Export, &format!("{key}@{zone}"))?;
            let result = op.service.tr31_export(&request);
            let subject = format!("{key}@{zone}");
            let logged = op.record(
                keyd_proto::message::Tr31Export::OPCODE.0,
                &officers,
                Some(&subject),
                result.as_ref().ok().map(|b| b.kcv),
                &result,
            );
            print_block(&result?, &zone, json);
            logged
        }
        Command::Tr31Translate {
            from_zone,
            to_zone,
            approvers,
            json,
            block,
        } => {
            let op = Operator::open(&config)?;
            let block = block_argument(&block)?;
            let (header, kcv) = op.service.tr31_inspect(&from_zone, &block)?;
            let subject = format!("{}@{to_zone}", keyd::kcv_hex(kcv));
            eprintln!(
                "keyd: the block holds {} with KCV {}; moving it to {to_zone} is `export {subject}`",
                header_text(&header),
                keyd::kcv_hex(kcv)
            );
            let request = keyd_proto::message::Tr31Translate {
                from_zone,
                to_zone: to_zone.clone(),
                key_block: block,
            };
            // Refused before any officer is asked for a password if it cannot go there.
            op.service.tr31_translate_check(&request)?;
            let officers = op.approvals(&approvers, Action::Export, &subject)?;
            let result = op.service.tr31_translate(&request);
            let logged = op.record(
                keyd_proto::message::Tr31Translate::OPCODE.0,
                &officers,
                Some(&subject),
                Some(kcv),
                &result,
            );
            print_block(&result?, &to_zone, json);
            logged
        }
        Command::KeyDisable { key_id, officer } => key_state(
            &config,
            &key_id,
            officer.as_deref(),
            audit::op::KEY_DISABLE,
            keyd::Service::disable_key,
            "disabled (a running keyd refuses it within a second)",
        ),
        Command::KeyEnable { key_id, officer } => key_state(
            &config,
            &key_id,
            officer.as_deref(),
            audit::op::KEY_ENABLE,
            keyd::Service::enable_key,
            "enabled",
        ),
        Command::KeyRestore { key_id, officer } => key_state(
            &config,
            &key_id,
            officer.as_deref(),
            audit::op::KEY_RESTORE,
            keyd::Service::restore_key,
            "restored, disabled: enable it with key-enable",
        ),
        Command::KeyDestroy { key_id, approvers } => {
            let op = Operator::open(&config)?;
            let officers = op.approvals(&approvers, Action::Destroy, &key_id)?;
            let result = op.service.destroy_key(&key_id);
            let logged = op.record(
                audit::op::KEY_DESTROY,
                &officers,
                Some(&key_id),
                None,
                &result,
            );
            let erase_at = result?;
            eprintln!(
                "keyd: {key_id} is refused from now on and will be erased at {} unless restored (key-restore) before",
                utc(erase_at)
            );
            logged
        }
        Command::Serve => {
            // The socket is made 0660 by `bind`; the PIN file is checked with the config.
            if let Some(store) = &config.store {
                keyd::harden::not_world_accessible(store)?;
            }
            keyd::harden::not_world_accessible(&config.audit_path())?;
            keyd::selftest::run()?;
            tracing::info!(tests = ?keyd::selftest::NAMES, "known-answer self-tests passed");
            let service = keyd::open_service(&config)?;
            let audit = Arc::new(open_audit(&config, &service)?);
            if !config.officers.dual() {
                dual_control_off_warning(&audit, "keyd")?;
            }
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

/// A reversible key-state change by one officer (disable, enable, restore), on the log.
fn key_state(
    config: &keyd::Config,
    key_id: &str,
    officer: Option<&str>,
    opcode: u16,
    change: fn(&keyd::Service, &str) -> Result<(), keyd::Error>,
    done: &str,
) -> Result<(), keyd::Error> {
    let op = Operator::open(config)?;
    let officers = op.one_officer(officer)?;
    let result = change(&op.service, key_id);
    let logged = op.record(opcode, &officers, Some(key_id), None, &result);
    result?;
    eprintln!("keyd: {key_id} {done}");
    logged
}

/// Says loudly, on standard error and in the audit log, that dual control is off.
fn dual_control_off_warning(audit: &Audit, peer: &str) -> Result<(), keyd::Error> {
    tracing::warn!(
        "DUAL CONTROL IS OFF (officers.dual_control = \"off-for-tests\"): ceremonies, exports \
         and destructions need no officers' approval. For automated test environments only."
    );
    audit.record(&audit::Entry {
        peer,
        opcode: audit::op::DUAL_CONTROL_OFF,
        subject: Some("dual-control-off-for-tests"),
        kcv: None,
        status: keyd_proto::Status::OK,
        micros: 0,
    });
    audit.flush(true)
}

/// Reads `n` components of the algorithm's length (64 hex digits for AES-256, 32 for
/// double-length TDES; without echo on a terminal) and combines them by XOR, printing each
/// one's KCV as it is accepted. Refuses a malformed, all-zero or repeated component. A TDES
/// key's parity is fixed by the service (components combined by XOR lose it).
#[allow(
    clippy::print_stdout,
    reason = "custodians compare the KCVs with their forms"
)]
fn read_components(
    what: &str,
    n: u8,
    algorithm: keyd::ZmkAlgorithm,
) -> Result<Zeroizing<Vec<u8>>, keyd::Error> {
    let digits = 2 * algorithm.key_len();
    let mut key = Zeroizing::new(vec![0u8; algorithm.key_len()]);
    let mut seen: Vec<[u8; 3]> = Vec::new();
    for i in 1..=n {
        let line = keyd::console::read_secret(&format!(
            "Component {i} of {n} for {what} ({digits} hex digits)"
        ))?;
        let part = decode_hex(line.trim(), algorithm.key_len()).ok_or_else(|| {
            let other = match algorithm {
                keyd::ZmkAlgorithm::Aes => " (32 are a TDES component: --algorithm tdes)",
                keyd::ZmkAlgorithm::Tdes => "",
            };
            keyd::Error::BadRequest(format!(
                "component {i}: expected {digits} hex digits{other}"
            ))
        })?;
        // A TDES component of parity bits alone is zero too.
        let key_bits = match algorithm {
            keyd::ZmkAlgorithm::Aes => 0xFF,
            keyd::ZmkAlgorithm::Tdes => 0xFE,
        };
        if part.iter().all(|b| *b & key_bits == 0) {
            return Err(keyd::Error::BadRequest(format!(
                "component {i} is all zeros"
            )));
        }
        let kcv = algorithm.kcv(&part);
        // Equal components would cancel out (or repeat): compare by check value, which is what
        // custodians see.
        if seen.contains(&kcv) {
            return Err(keyd::Error::BadRequest(format!(
                "component {i} repeats an earlier one"
            )));
        }
        seen.push(kcv);
        for (k, p) in key.iter_mut().zip(part.iter()) {
            *k ^= p;
        }
        if n > 1 {
            println!("component {i} KCV {}", keyd::kcv_hex(kcv));
        }
    }
    Ok(key)
}

/// `--algorithm` as the service names it.
fn zmk_algorithm(name: &str) -> Result<keyd::ZmkAlgorithm, keyd::Error> {
    keyd::ZmkAlgorithm::from_name(name)
        .ok_or_else(|| keyd::Error::BadRequest("algorithms are aes and tdes".into()))
}

/// `n` fresh components of a ZMK from the token's RNG (TDES ones with odd parity, as
/// custodians expect them) and the key they combine to (its parity fixed by the service).
type Components = (Vec<Zeroizing<Vec<u8>>>, Zeroizing<Vec<u8>>);

fn generate_components(
    op: &Operator,
    algorithm: keyd::ZmkAlgorithm,
    n: u8,
) -> Result<Components, keyd::Error> {
    let len = algorithm.key_len();
    loop {
        let mut parts = Vec::with_capacity(usize::from(n));
        let mut zmk = Zeroizing::new(vec![0u8; len]);
        for _ in 0..n {
            let mut part = Zeroizing::new(vec![0u8; len]);
            op.service.hsm().random(&mut part[..])?;
            if algorithm == keyd::ZmkAlgorithm::Tdes {
                keyd::odd_parity(&mut part);
            }
            for (z, p) in zmk.iter_mut().zip(part.iter()) {
                *z ^= p;
            }
            parts.push(part);
        }
        // Two equal TDES halves (single DES) would be refused: draw again (one chance in 2^56).
        let single_des = algorithm == keyd::ZmkAlgorithm::Tdes
            && zmk
                .iter()
                .zip(zmk.iter().skip(8))
                .take(8)
                .all(|(a, b)| a & 0xFE == b & 0xFE);
        if !single_des {
            return Ok((parts, zmk));
        }
    }
}

/// `keyd init`: every officer's password is read and checked before the LMK is created, so a
/// typo leaves the token untouched.
#[allow(
    clippy::print_stdout,
    reason = "the LMK's KCV is the ceremony's result"
)]
fn init(
    config: &keyd::Config,
    names: &[String],
    components: Option<u8>,
) -> Result<(), keyd::Error> {
    // A key store restored on a standby site brings its officers (their credentials are
    // peppered by the same LMK, formed again from the same components).
    let existing: Vec<String> = {
        keyd::open_store(config)?
            .officers()?
            .into_iter()
            .map(|o| o.name)
            .collect()
    };
    if let Some(name) = names.iter().find(|n| existing.contains(n)) {
        return Err(keyd::Error::BadRequest(format!(
            "officer {name} is in the key store already"
        )));
    }
    if config.officers.dual() && names.len() + existing.len() < 2 {
        return Err(keyd::Error::BadRequest(
            "dual control needs at least two officers: name each with --officer".into(),
        ));
    }
    distinct(names)?;
    let mut passwords = Vec::with_capacity(names.len());
    for name in names {
        passwords.push(new_password(name)?);
    }
    let hsm = keyd::open_hsm(config)?;
    if hsm.has_lmk() {
        return Err(keyd::Error::Conflict("the LMK exists already"));
    }
    // Before the LMK exists nothing can key the chain: these records are the unkeyed head
    // that the first keyed record will cover.
    let audit = Audit::open(
        &config.audit_path(),
        None,
        config.audit_checkpoints.as_deref(),
    )?;
    let started = std::time::Instant::now();
    let peer = operator_peer(&[]);
    if !config.officers.dual() {
        dual_control_off_warning(&audit, &peer)?;
    }
    let result = match components {
        Some(n) => read_components("the LMK", n, keyd::ZmkAlgorithm::Aes)
            .and_then(|lmk| hsm.import_lmk(&lmk[..])),
        None => hsm.create_lmk(),
    };
    let kcv = result
        .as_ref()
        .ok()
        .and_then(|()| hsm.lmk_cmac(&[0u8; 16]).ok())
        .map(|mac| keyd::kcv_of_cmac(&mac));
    record(&audit, &peer, audit::op::INIT, None, kcv, &result, started)?;
    result?;
    // The LMK exists: from here the chain is keyed, starting with a record that covers the
    // unkeyed ones above.
    drop(audit);
    let audit = Audit::open_first_keyed(
        &config.audit_path(),
        audit::AuditKey::derive(&*hsm, &*keyd::open_store(config)?)?,
        config.audit_checkpoints.as_deref(),
    )?;
    println!("LMK KCV {}", keyd::kcv_hex(kcv.unwrap_or_default()));
    eprintln!(
        "keyd: LMK {} in the token",
        if components.is_some() {
            "formed from components"
        } else {
            "generated"
        }
    );
    let service = keyd::service_on(config, hsm)?;
    for (name, password) in names.iter().zip(&passwords) {
        let result = service.officers().enrol(service.hsm(), name, password);
        record(
            &audit,
            &peer,
            audit::op::OFFICER_ADD,
            Some(name),
            None,
            &result,
            started,
        )?;
        result?;
        eprintln!("keyd: officer {name} enrolled");
    }
    Ok(())
}

/// Reads a new officer's password: twice on a terminal (a typo would lock them out), once
/// from a non-terminal standard input. Checked before it is used.
fn new_password(name: &str) -> Result<Password, keyd::Error> {
    let first = keyd::console::read_secret(&format!("New password for officer {name}"))?;
    if keyd::console::is_terminal() {
        let again = keyd::console::read_secret(&format!("Repeat the password for {name}"))?;
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            first.as_bytes(),
            again.as_bytes(),
        )) {
            return Err(keyd::Error::BadRequest(format!(
                "the two passwords for {name} differ"
            )));
        }
    }
    let password = Password::new(first);
    Officers::check_new(name, &password)?;
    Ok(password)
}

fn distinct(names: &[String]) -> Result<(), keyd::Error> {
    for (i, name) in names.iter().enumerate() {
        if names.get(..i).unwrap_or_default().contains(name) {
            return Err(keyd::Error::BadRequest(format!(
                "{name} is named twice: dual control needs distinct officers"
            )));
        }
    }
    Ok(())
}

/// `operator:uid:N`, or `operator:uid:N:alice+bob` once officers are known.
fn operator_peer(officers: &[String]) -> String {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid());
    if officers.is_empty() {
        format!("operator:uid:{uid}")
    } else {
        format!("operator:uid:{uid}:{}", officers.join("+"))
    }
}

/// Records an operator command (run in-process, not over the socket) and syncs the log.
fn record<T>(
    audit: &Audit,
    peer: &str,
    opcode: u16,
    subject: Option<&str>,
    kcv: Option<[u8; 3]>,
    result: &Result<T, keyd::Error>,
    started: std::time::Instant,
) -> Result<(), keyd::Error> {
    audit.record(&audit::Entry {
        peer,
        opcode,
        subject,
        kcv,
        status: result
            .as_ref()
            .err()
            .map_or(keyd_proto::Status::OK, keyd::Error::status),
        micros: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
    });
    audit.flush(true)
}

/// The audit log, keyed by the token's LMK.
fn open_audit(config: &keyd::Config, service: &keyd::Service) -> Result<Audit, keyd::Error> {
    Audit::open(
        &config.audit_path(),
        Some(service.audit_key()?),
        config.audit_checkpoints.as_deref(),
    )
}

/// An officer's command: the audit log, the service, and when it started.
struct Operator {
    audit: Audit,
    service: Arc<keyd::Service>,
    started: std::time::Instant,
}

impl Operator {
    fn open(config: &keyd::Config) -> Result<Self, keyd::Error> {
        let started = std::time::Instant::now();
        let service = keyd::open_service(config)?;
        let audit = open_audit(config, &service)?;
        if !config.officers.dual() {
            dual_control_off_warning(&audit, &operator_peer(&[]))?;
        }
        // Keys whose restore window ended are erased by whichever keyd process looks first.
        for key_id in service.housekeeping()? {
            record(
                &audit,
                "keyd",
                audit::op::KEY_ERASED,
                Some(&key_id),
                None,
                &Ok::<(), keyd::Error>(()),
                started,
            )?;
        }
        Ok(Self {
            audit,
            service,
            started,
        })
    }

    fn record<T>(
        &self,
        opcode: u16,
        officers: &[String],
        subject: Option<&str>,
        kcv: Option<[u8; 3]>,
        result: &Result<T, keyd::Error>,
    ) -> Result<(), keyd::Error> {
        record(
            &self.audit,
            &operator_peer(officers),
            opcode,
            subject,
            kcv,
            result,
            self.started,
        )
    }

    /// Asks an officer for their password and checks it; every attempt is on the audit log.
    fn login(&self, name: &str) -> Result<(), keyd::Error> {
        let password = Password::new(keyd::console::read_secret(&format!(
            "Password for officer {name}"
        ))?);
        let result = self.service.officers().authenticate(name, &password);
        self.record(audit::op::OFFICER_LOGIN, &[], Some(name), None, &result)?;
        result.map_err(|e| match e {
            keyd::Error::Auth => {
                keyd::Error::BadRequest(format!("officer {name}: authentication failed"))
            }
            other => other,
        })
    }

    /// Logs an officer in and records their approval.
    fn approve(&self, name: &str, action: Action, subject: &str) -> Result<(), keyd::Error> {
        self.login(name)?;
        let result = self.service.officers().approve(name, action, subject);
        let what = format!("{}:{subject}", action.name());
        self.record(
            audit::op::APPROVAL,
            &[name.to_owned()],
            Some(&what),
            None,
            &result,
        )?;
        result
    }

    /// The approvals a controlled action needs: each named approver logs in and approves;
    /// with dual control on, two distinct officers' approvals must then be waiting (some may
    /// have been given earlier with `approve`), checked before anything is asked of the
    /// custodians. Returns who approved, for the audit record.
    fn approvals(
        &self,
        approvers: &[String],
        action: Action,
        subject: &str,
    ) -> Result<Vec<String>, keyd::Error> {
        distinct(approvers)?;
        for name in approvers {
            self.approve(name, action, subject)?;
        }
        let officers = self.service.officers();
        if !officers.policy().dual() {
            return Ok(approvers.to_vec());
        }
        let so_far = officers.approved_so_far(action, subject)?;
        if so_far.len() < 2 {
            return Err(keyd::Error::DualControl(format!(
                "{} {subject} needs two distinct officers' approvals within {} s; approved so far by: {}. Name them with --approver, or have them run `keyd approve --action {} --subject {subject} --officer NAME`",
                action.name(),
                officers.policy().approval_window_secs,
                if so_far.is_empty() {
                    "no one".to_owned()
                } else {
                    so_far.join(", ")
                },
                action.name(),
            )));
        }
        Ok(so_far)
    }

    /// The one officer a reversible key-state change needs (none with dual control off).
    fn one_officer(&self, officer: Option<&str>) -> Result<Vec<String>, keyd::Error> {
        match officer {
            Some(name) => {
                self.login(name)?;
                Ok(vec![name.to_owned()])
            }
            None if self.service.officers().policy().dual() => Err(keyd::Error::BadRequest(
                "name the officer doing this with --officer".into(),
            )),
            None => Ok(Vec::new()),
        }
    }

    /// Loads a formed ZMK into the token (using up the approvals), records the ceremony with
    /// the ZMK's KCV and prints the KCV for the officers to compare. The outer error says the
    /// ZMK was not loaded; the inner one that it was, but the record or the announcement to a
    /// running keyd failed (reported after the KCV, so a made key is never hidden).
    #[allow(clippy::print_stdout, reason = "the KCV is the ceremony's result")]
    fn load_zmk(
        &self,
        zone: &str,
        zmk: &[u8],
        opcode: u16,
        officers: &[String],
    ) -> Result<Result<(), keyd::Error>, keyd::Error> {
        let imported = self.service.zmk_import(&keyd_proto::message::ZmkImport {
            zone: zone.to_owned(),
            key: keyd_proto::Secret::new(zmk),
        });
        let logged = self.record(
            opcode,
            officers,
            Some(zone),
            imported.as_ref().ok().map(|i| i.kcv),
            &imported,
        );
        let info = imported?;
        let algorithm = keyd::ZmkAlgorithm::from_key_len(zmk.len()).map_or("", |a| a.describe());
        println!(
            "zone {} ZMK KCV {} ({algorithm})",
            info.zone,
            keyd::kcv_hex(info.kcv)
        );
        // A running `keyd serve` finds the new zone at its next housekeeping (within a second).
        let announced = self.service.announce_change();
        Ok(logged.and(announced))
    }

    /// Runs an LMK rotation's rewrap and switch, with records at its start and end.
    #[allow(clippy::print_stdout, reason = "the current LMK's KCV is the result")]
    fn rewrap(
        &self,
        officers: &[String],
        batch: usize,
        pause_after: Option<usize>,
    ) -> Result<(), keyd::Error> {
        let started = self.service.lmk_states();
        let to = started
            .iter()
            .find(|l| matches!(l.state, keyd::LmkState::Pending | keyd::LmkState::Next))
            .map(|l| l.kcv);
        self.record(
            audit::op::LMK_REWRAP,
            officers,
            Some("start"),
            to,
            &Ok::<(), keyd::Error>(()),
        )?;
        let result = self.service.lmk_rewrap(batch, &mut |moved| {
            tracing::info!(moved, "LMK rewrap: blocks moved so far");
            if pause_after.is_some_and(|n| moved >= n) {
                eprintln!("keyd: paused after {moved} blocks (--test-pause-after)");
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(3600));
                }
            }
        });
        let subject = result
            .as_ref()
            .map_or_else(|_| "failed".to_owned(), |r| format!("{}-blocks", r.moved));
        self.record(audit::op::LMK_REWRAP, officers, Some(&subject), to, &result)?;
        let done = result?;
        self.record(
            audit::op::LMK_SWITCH,
            officers,
            Some(&format!("from-{}", keyd::kcv_hex(done.from))),
            Some(done.to),
            &Ok::<(), keyd::Error>(()),
        )?;
        self.service.announce_change()?;
        println!("LMK KCV {}", keyd::kcv_hex(done.to));
        eprintln!(
            "keyd: {} blocks moved; LMK {} is current, {} is retired and kept for the restore \
             window (officers.lmk_restore_window_secs), then destroyed",
            done.moved,
            keyd::kcv_hex(done.to),
            keyd::kcv_hex(done.from)
        );
        Ok(())
    }

    /// Refuses, before anything is asked of officers or custodians, a zone that has a ZMK.
    fn new_zone(&self, zone: &str) -> Result<(), keyd::Error> {
        if self.service.has_zone(zone) {
            return Err(keyd::Error::Conflict("the zone has a ZMK already"));
        }
        Ok(())
    }
}

/// A key block from the command line, or from standard input for `-` (blocks are wrapped, so
/// the command line is no leak; standard input suits scripts and long blocks).
fn block_argument(arg: &str) -> Result<String, keyd::Error> {
    if arg != "-" {
        return Ok(arg.trim().to_owned());
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim().to_owned())
}

/// A header for people: `D P0 T E 00 E` and its optional blocks' ids.
/// Prints a stored partner key: its id, label, zone (when it came under one), header and KCV,
/// as text or one JSON object.
#[allow(
    clippy::print_stdout,
    reason = "the key's id and KCV are the command's result"
)]
fn print_key(
    key: &keyd_proto::message::ImportedKey,
    label: &str,
    zone: Option<&str>,
    header: &tr31::Header,
    json: bool,
) {
    let kcv = keyd::kcv_hex(key.kcv);
    if json {
        let mut out = serde_json::json!({
            "key_id": key.key_id, "label": label,
            "header": header_json(header), "kcv": kcv,
        });
        if let (Some(zone), Some(obj)) = (zone, out.as_object_mut()) {
            obj.insert("zone".into(), zone.into());
        }
        println!("{out}");
    } else {
        println!("key {} ({label})", key.key_id);
        println!("header {}", header_text(header));
        println!("KCV {kcv}");
    }
}

fn header_text(h: &tr31::Header) -> String {
    let blocks: Vec<String> = h
        .optional_blocks
        .iter()
        .map(|b| b.id().as_str().to_owned())
        .collect();
    format!(
        "version {} usage {} algorithm {} mode {} key version {} exportability {}{}",
        h.version,
        h.key_usage,
        h.algorithm,
        h.mode_of_use,
        h.key_version.as_str(),
        h.exportability,
        if blocks.is_empty() {
            String::new()
        } else {
            format!(" blocks {}", blocks.join(","))
        }
    )
}

/// A header for scripts, with the member names of the `tr31` command.
fn header_json(h: &tr31::Header) -> serde_json::Value {
    serde_json::json!({
        "version": h.version.to_string(), "key_usage": h.key_usage.as_str(),
        "algorithm": h.algorithm.to_string(), "mode_of_use": h.mode_of_use.to_string(),
        "key_version": h.key_version.as_str(), "exportability": h.exportability.to_string(),
        "optional_blocks": h
            .optional_blocks
            .iter()
            .map(|b| b.id().as_str().to_owned())
            .collect::<Vec<_>>(),
    })
}

/// Prints an exported or translated block and its KCV.
#[allow(clippy::print_stdout, reason = "the block is the command's result")]
fn print_block(out: &keyd_proto::message::KeyBlockOut, zone: &str, json: bool) {
    let kcv = keyd::kcv_hex(out.kcv);
    if json {
        println!(
            "{}",
            serde_json::json!({"key_block": out.key_block, "kcv": kcv, "zone": zone})
        );
    } else {
        println!("{}", out.key_block);
        println!("KCV {kcv} under zone {zone}");
    }
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of Unix seconds.
fn utc(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .map_or_else(
            || "?".to_owned(),
            |t| {
                format!(
                    "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
                    t.year(),
                    u8::from(t.month()),
                    t.day(),
                    t.hour(),
                    t.minute(),
                    t.second()
                )
            },
        )
}

/// One custodian form: the key's name, which component, its value in groups of four, its KCV,
/// the combined key's KCV, and lines for the custodian's and the witness's signatures.
#[allow(clippy::print_stdout, reason = "the form is printed for its custodian")]
fn print_form(
    zone: &str,
    algorithm: keyd::ZmkAlgorithm,
    n: usize,
    of: usize,
    part: &[u8],
    final_kcv: [u8; 3],
) {
    use std::fmt::Write as _;
    // Lines of eight groups of four hex digits, written into one buffer sized up front.
    let mut value = Zeroizing::new(String::with_capacity(96));
    for (i, pair) in part.chunks_exact(2).enumerate() {
        let sep = match i {
            0 => "",
            _ if i % 8 == 0 => "\n                ",
            _ => " ",
        };
        let _ = write!(
            value,
            "{sep}{:02X}{:02X}",
            pair.first().copied().unwrap_or(0),
            pair.get(1).copied().unwrap_or(0)
        );
    }
    let kcv = algorithm.kcv(part);
    let rule = "=".repeat(64);
    println!("{rule}");
    println!("ZMK COMPONENT FORM");
    println!(
        "Key:            zone master key (ZMK), zone {zone}, {}",
        algorithm.describe()
    );
    println!("Component:      {n} of {of}");
    println!("Value:          {}", value.as_str());
    println!("Component KCV:  {}", keyd::kcv_hex(kcv));
    println!(
        "ZMK KCV:        {}  (all components combined)",
        keyd::kcv_hex(final_kcv)
    );
    println!();
    println!("Custodian:      ______________________________  Date: ____________");
    println!("Witness:        ______________________________  Date: ____________");
    println!("{rule}");
    println!("\x0c");
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

/// `2 * len` hex digits into a zeroizing key buffer (no intermediate, reallocating copies).
fn decode_hex(text: &str, len: usize) -> Option<Zeroizing<Vec<u8>>> {
    if text.len() != 2 * len {
        return None;
    }
    let mut key = Zeroizing::new(vec![0u8; len]);
    for (byte, pair) in key.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        let digit = |c: u8| char::from(c).to_digit(16);
        *byte = u8::try_from(digit(*pair.first()?)? * 16 + digit(*pair.get(1)?)?).ok()?;
    }
    Some(key)
}

/// A duration as operators write it: a number and a unit (`s`, `m`, `h`, `d`, `y` of 365
/// days), in seconds.
fn age(text: &str) -> Result<u64, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or("give a unit: s, m, h, d or y (e.g. 90d)")?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text}: not a number of units"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "y" => 365 * 86_400,
        _ => return Err(format!("{text}: units are s, m, h, d, y")),
    };
    n.checked_mul(unit)
        .ok_or_else(|| format!("{text}: too long"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ages_are_a_number_and_a_unit() {
        assert_eq!(super::age("90d"), Ok(90 * 86_400));
        assert_eq!(super::age("12h"), Ok(12 * 3600));
        assert_eq!(super::age("2y"), Ok(2 * 365 * 86_400));
        assert_eq!(super::age("30s"), Ok(30));
        for bad in ["90", "d", "9x", "-1d", "99999999999999999999y"] {
            assert!(super::age(bad).is_err(), "{bad}");
        }
    }
}
