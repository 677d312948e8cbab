//! `pos-sim`: a POS terminal on the command line, built from the contract (`e2e::pos`).
//!
//! `run` is one terminal end to end with readable output: it is injected like a real terminal
//! (the zone's ZMK from its components, the identity key's id and secret), then bootstraps,
//! shows a pairing code and waits to be claimed (or claims itself with `--claim-token`),
//! attests, receives and unwraps its key set, fetches its config and terminal parameters,
//! activates and charges. `load` activates many terminals of a merchant and drives signed,
//! encrypted charges at a rate or flat out, with a progress line and a latency histogram.
//!
//! It speaks plain HTTP to an API on loopback (`plain_http = true`).

#![allow(
    clippy::print_stdout,
    clippy::indexing_slicing,
    reason = "a command-line tool talks to the person running it"
)]

use std::io::BufRead;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use e2e::api::Client;
use e2e::pos::Terminal;
use serde_json::{Value, json};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// A POS terminal simulator.
#[derive(Debug, Parser)]
#[command(
    name = "pos-sim",
    after_help = "Examples:\n  \
        pos-sim --api 127.0.0.1:8080 run --device-id POS-8F3A2C91 --identity-key-id idk-… \\\n    \
        --identity-secret - --zmk-component - --zmk-component - --claim-token \"$T\"\n  \
        pos-sim --api 127.0.0.1:8080 load --token \"$T\" --merchant <id> --zmk-component - \\\n    \
        --terminals 16 --connections 32 --seconds 30 --rate 2000\n\n\
        A `-` reads that secret as one line of standard input (the ZMK components first, then \
        the identity secret), so nothing secret is on the command line."
)]
struct Cli {
    /// The API's loopback address (host:port, http:// optional).
    #[arg(long, default_value = "127.0.0.1:8080")]
    api: String,
    /// The zone's ZMK components (64 hex digits each, XORed), as injected into the terminal.
    #[arg(long = "zmk-component", required = true)]
    zmk_components: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One terminal, end to end.
    Run {
        /// `POS-` and 8 hex digits.
        #[arg(long)]
        device_id: String,
        /// The identity key's id (`idk-…`) from the device's registration.
        #[arg(long)]
        identity_key_id: String,
        /// The identity secret (base64, as shown once at registration), or `-`.
        #[arg(long)]
        identity_secret: String,
        /// A backoffice bearer token to claim the device with; without it the simulator waits
        /// for someone to claim the pairing code it shows.
        #[arg(long)]
        claim_token: Option<String>,
        /// Charges to make after activation.
        #[arg(long, default_value_t = 3)]
        charges: u32,
        /// Amount of each charge, minor units.
        #[arg(long, default_value_t = 1500)]
        amount: u64,
        /// Currency (the merchant's).
        #[arg(long, default_value = "EUR")]
        currency: String,
        /// Card number (the simulator's outcome table decides approvals and declines).
        #[arg(long, default_value = "4242424242424242")]
        pan: String,
        /// Instead of `--charges`/`--amount`/`--pan`: one charge per `PAN:AMOUNT`, in order
        /// (repeat it, e.g. once per outcome of the processor simulator).
        #[arg(long = "card", value_parser = card)]
        cards: Vec<(String, u64)>,
        /// The cardholder's PIN, entered on every charge: sent as an ISO 9564-1 format 4
        /// block under the delivered TPK (the simulator approves `1234`, spec 12.7).
        #[arg(long)]
        pin: Option<String>,
        /// After the charges, keep sending heartbeats at the interval the config gives for
        /// this many seconds (the terminal stays `online`; when it stops, the platform marks
        /// it `offline` after three missed intervals).
        #[arg(long, default_value_t = 0)]
        stay_online: u64,
    },
    /// Many terminals of one merchant, charging in parallel (faster than the API's default
    /// `[rate_limits] per_terminal` allows a real terminal: raise it on the API under test).
    Load {
        /// A platform or merchant admin's bearer token (session initiated or not).
        #[arg(long)]
        token: String,
        /// The merchant whose terminals are registered and charged.
        #[arg(long)]
        merchant: String,
        /// Terminals to register and activate.
        #[arg(long, default_value_t = 16)]
        terminals: u32,
        /// First device number (devices are `POS-` + 8 hex digits from it).
        #[arg(long, default_value_t = 0x5000)]
        first_device: u32,
        /// Keep-alive connections, each sending one charge at a time.
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Seconds of load.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Charges per second over all connections (0: flat out).
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Currency (the merchant's).
        #[arg(long, default_value = "EUR")]
        currency: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pos-sim: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A secret argument, or a line of standard input for `-`.
fn secret(value: &str, what: &str) -> Result<String, Error> {
    if value != "-" {
        return Ok(value.to_owned());
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let line = line.trim().to_owned();
    if line.is_empty() {
        return Err(format!("no {what} on standard input").into());
    }
    Ok(line)
}

/// The ZMK from its components: each 64 hex digits, distinct, not all zero; XORed.
fn zmk(components: &[String]) -> Result<Vec<u8>, Error> {
    let mut key = vec![0u8; 32];
    let mut seen = Vec::new();
    for (i, c) in components.iter().enumerate() {
        let c = secret(c, "ZMK component")?;
        let bytes = e2e::pos::unhex(&c)?;
        if bytes.len() != 32 {
            return Err(format!("ZMK component {}: 64 hex digits expected", i + 1).into());
        }
        if bytes.iter().all(|b| *b == 0) || seen.contains(&bytes) {
            return Err(format!("ZMK component {}: all zero or a repeat", i + 1).into());
        }
        let kcv = tr31::kcv::cmac_aes(&bytes)?;
        println!(
            "   ZMK component {} accepted, KCV {}",
            i + 1,
            e2e::pos::hex_upper(&kcv[..3])
        );
        for (k, b) in key.iter_mut().zip(&bytes) {
            *k ^= b;
        }
        seen.push(bytes);
    }
    let kcv = tr31::kcv::cmac_aes(&key)?;
    println!("   ZMK formed, KCV {}", e2e::pos::hex_upper(&kcv[..3]));
    Ok(key)
}

fn port(api: &str) -> Result<u16, Error> {
    let address = api
        .strip_prefix("http://")
        .unwrap_or(api)
        .trim_end_matches('/');
    let (host, port) = address.rsplit_once(':').ok_or("--api is host:port")?;
    if !matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
        return Err("pos-sim speaks plain HTTP to a loopback API only".into());
    }
    Ok(port.parse()?)
}

fn run(cli: Cli) -> Result<(), Error> {
    let http = Client::new(port(&cli.api)?);
    println!("== key injection");
    let zmk = zmk(&cli.zmk_components)?;
    match cli.command {
        Command::Run {
            device_id,
            identity_key_id,
            identity_secret,
            claim_token,
            charges,
            amount,
            currency,
            pan,
            cards,
            pin,
            stay_online,
        } => {
            let secret = secret(&identity_secret, "identity secret")?;
            let cards = if cards.is_empty() {
                (0..charges).map(|_| (pan.clone(), amount)).collect()
            } else {
                cards
            };
            let mut t = Terminal::new(http, &device_id, &identity_key_id, &secret, &zmk)?;
            let charges = Charges {
                cards: &cards,
                currency: &currency,
                pin: pin.as_deref(),
                stay_online: Duration::from_secs(stay_online),
            };
            one_terminal(http, &mut t, claim_token.as_deref(), &charges)
        }
        Command::Load {
            token,
            merchant,
            terminals,
            first_device,
            connections,
            seconds,
            rate,
            currency,
        } => {
            let body = json!({"host": "localhost"});
            let _ = http.call("POST", "/session/initiate", Some(&token), Some(&body))?;
            println!("== activating {terminals} terminals");
            let started = Instant::now();
            let ts = e2e::load::activate_terminals(
                http,
                &token,
                &merchant,
                &zmk,
                first_device,
                terminals,
            )?;
            println!("   done in {:.1} s", started.elapsed().as_secs_f64());
            println!(
                "== {connections} connections, {seconds} s, {}",
                if rate == 0 {
                    "flat out".to_owned()
                } else {
                    format!("{rate}/s")
                }
            );
            let report = e2e::load::run(
                port(&cli.api)?,
                &ts,
                &e2e::load::Options {
                    connections,
                    duration: Duration::from_secs(seconds),
                    rate,
                    progress: true,
                    pan: "4242424242424242".into(),
                    currency,
                    collect: false,
                    pin: None,
                },
            );
            print!("{}", report.summary());
            Ok(())
        }
    }
}

/// `PAN:AMOUNT` of `--card`.
fn card(text: &str) -> Result<(String, u64), String> {
    let (pan, amount) = text
        .split_once(':')
        .ok_or_else(|| "expected PAN:AMOUNT (amount in minor units)".to_owned())?;
    if !(12..=19).contains(&pan.len()) || !pan.bytes().all(|b| b.is_ascii_digit()) {
        return Err("a PAN is 12-19 digits".into());
    }
    let amount = amount
        .parse()
        .map_err(|_| "the amount is a whole number of minor units".to_owned())?;
    Ok((pan.to_owned(), amount))
}

/// What one terminal charges after activation.
struct Charges<'a> {
    /// `(PAN, amount)` per charge, in order.
    cards: &'a [(String, u64)],
    /// The merchant's currency.
    currency: &'a str,
    /// The PIN entered on every charge, if any.
    pin: Option<&'a str>,
    /// How long to keep beating after the charges.
    stay_online: Duration,
}

/// The app version this simulator reports.
const APP_VERSION: &str = "1.4.2";

/// `POST /pos/heartbeat`, printed.
fn heartbeat(t: &mut Terminal, last_charge: Option<&str>) -> Result<(), Error> {
    let mut inner = json!({"app_version": APP_VERSION, "battery_pct": 87, "network": "wifi"});
    if let (Some(id), Some(obj)) = (last_charge, inner.as_object_mut()) {
        obj.insert("last_charge_id".into(), Value::from(id));
    }
    let (a, v) = t.heartbeat(&inner)?;
    if a.status != 200 {
        return Err(format!("heartbeat: {} {}", a.status, a.json).into());
    }
    println!(
        "   heartbeat: received at {}",
        v.unwrap_or(Value::Null)["received_at"]
            .as_str()
            .unwrap_or("")
    );
    Ok(())
}

fn one_terminal(
    http: Client,
    t: &mut Terminal,
    claim_token: Option<&str>,
    charges: &Charges<'_>,
) -> Result<(), Error> {
    println!("== {}", t.device_id());
    let boot = t.bootstrap()?;
    if boot.status != 200 {
        return Err(format!("bootstrap: {} {}", boot.status, boot.json).into());
    }
    println!(
        "   bootstrap: server time {}",
        boot.json["server_time"].as_str().unwrap_or("")
    );
    let status = t.status()?.json;
    println!(
        "   status: {}",
        status["device_status"].as_str().unwrap_or("")
    );
    if status["device_status"] == "inactive" {
        let code = t.pairing_code()?;
        let code = code.json["pairing_code"]
            .as_str()
            .ok_or("no pairing code")?
            .to_owned();
        println!("   pairing code: {code}");
        match claim_token {
            Some(token) => {
                let _ = http.call(
                    "POST",
                    "/session/initiate",
                    Some(token),
                    Some(&json!({"host": "localhost"})),
                )?;
                let claim = http.call(
                    "POST",
                    "/pos/claim",
                    Some(token),
                    Some(&json!({"pairing_code": code})),
                )?;
                if claim.status != 200 {
                    return Err(format!("claim: {} {}", claim.status, claim.json).into());
                }
                t.set_terminal_id(claim.json["terminal_id"].as_str().unwrap_or_default());
                println!("   claimed: terminal {}", t.terminal_id().unwrap_or(""));
            }
            None => {
                println!("   waiting for the merchant to claim it (POST /pos/claim) …");
                let deadline = Instant::now() + Duration::from_secs(300);
                while t.status()?.json["device_status"] == "inactive" {
                    if Instant::now() > deadline {
                        return Err("not claimed within 5 minutes".into());
                    }
                    std::thread::sleep(Duration::from_secs(2));
                }
                println!("   claimed");
            }
        }
    }
    let a = t.attest()?;
    if a.status != 200 {
        return Err(format!("attest: {} {}", a.status, a.json).into());
    }
    println!("   attested (token valid {} s)", a.json["expires_in_sec"]);
    let keys = t.keys()?;
    if keys.status != 200 {
        return Err(format!("keys: {} {}", keys.status, keys.json).into());
    }
    println!(
        "   key set {} unwrapped from the ZMK, KCVs checked:",
        keys.json["key_set"]["key_set_id"].as_str().unwrap_or("")
    );
    for kind in ["tmk", "kek", "msk", "tpk", "tdk", "mac"] {
        let k = &keys.json["keys"][kind];
        println!(
            "     {kind} {} KCV {}",
            k["key_id"].as_str().unwrap_or(""),
            k["kcv"].as_str().unwrap_or("")
        );
    }
    let (_, config) = t.config()?;
    let config = config.unwrap_or(Value::Null);
    println!(
        "   config: merchant {:?}, terminal {}",
        config["merchant"]["name"].as_str().unwrap_or(""),
        t.terminal_id().unwrap_or("")
    );
    let (tp, _) = t.terminal_parameters()?;
    println!(
        "   terminal parameters: {} envelope",
        tp.json["format"].as_str().unwrap_or("")
    );
    let (a, v) = t.activate()?;
    if a.status != 200 {
        return Err(format!("activate: {} {}", a.status, a.json).into());
    }
    println!(
        "   activated at {}",
        v.unwrap_or(Value::Null)["activated_at"]
            .as_str()
            .unwrap_or("")
    );
    heartbeat(t, None)?;
    let (a, v) = t.update_check(APP_VERSION)?;
    let v = v.unwrap_or(Value::Null);
    println!(
        "   update check ({APP_VERSION}): {} latest {}, update available {}, mandatory {}",
        a.status,
        v["latest_version"].as_str().unwrap_or("none published"),
        v["update_available"],
        v["mandatory"]
    );
    let interval =
        Duration::from_secs(config["intervals"]["heartbeat_sec"].as_u64().unwrap_or(300));
    let mut last_charge = None;
    for (i, (pan, amount)) in (1..).zip(charges.cards) {
        let reference = format!("sim-{i}");
        let (a, v) = match charges.pin {
            None => t.charge(pan, *amount, charges.currency, Some(&reference))?,
            Some(pin) => {
                let inner = json!({"amount": {"value": amount.to_string(), "currency": charges.currency},
                                   "entry_mode": "chip", "card": t.card_blob(pan)?,
                                   "reference": reference, "pin_block": t.pin_block(pin, pan)?});
                t.charge_with(&inner, None)?
            }
        };
        if let Some(c) = &v {
            last_charge = c["charge_id"].as_str().map(str::to_owned);
        }
        match v {
            Some(c) => println!(
                "   charge {i}: {} {} {} {}",
                c["charge_id"].as_str().unwrap_or(""),
                c["status"].as_str().unwrap_or(""),
                c["iso_response_code"].as_str().unwrap_or(""),
                c["decline_code"].as_str().unwrap_or("")
            ),
            None => println!("   charge {i}: {} {}", a.status, a.code()),
        }
    }
    heartbeat(t, last_charge.as_deref())?;
    if !charges.stay_online.is_zero() {
        println!(
            "   staying online for {} s (a heartbeat every {} s)",
            charges.stay_online.as_secs(),
            interval.as_secs()
        );
        let until = Instant::now() + charges.stay_online;
        while Instant::now() + interval <= until {
            std::thread::sleep(interval);
            heartbeat(t, last_charge.as_deref())?;
        }
    }
    Ok(())
}
