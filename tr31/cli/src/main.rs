//! `tr31`: unwrap, wrap and inspect TR-31 / ANSI X9.143 / ISO 20038 key blocks from the command
//! line. A thin shell over the `tr31` library; the output format is fixed by the platform
//! contract (section 11) so scripts and interoperability tests can rely on it.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde_json::Value;
use tr31::{Header, Kbpk, Key, KeyBlock, Padding, Profile, SealOptions};
use zeroize::Zeroizing;

const AFTER_HELP: &str = "\
Exit status: 0 on success; 1 on any failure, with one line on standard error and nothing on
standard output. A wrong KBPK, a wrong MAC and a wrong padding give the same message.

Secrets: pass `-` instead of a hex value for --kbpk or --key to read it from standard input (one
line each, KBPK first), which keeps it out of the process list and shell history.

Examples:
  tr31 inspect D0112P0AE00E0000B826...DC34
  tr31 unwrap --kbpk 88E1AB2A...44657DE6 D0112P0AE00E0000B826...DC34
  tr31 wrap --kbpk 88E1AB2A...44657DE6 --header D0000P0AE00E0000 --key 3F419E1CB7079442AA37474C2EFBF8B8
  tr31 kcv --algorithm A --key 3F419E1CB7079442AA37474C2EFBF8B8";

/// Unwrap, wrap and inspect TR-31 / ANSI X9.143 / ISO 20038 key blocks (versions A to E).
#[derive(Debug, Parser)]
#[command(name = "tr31", version, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Authenticate and decrypt a key block; print its header, the clear key and its KCV as JSON.
    #[command(
        after_help = "Output: {\"version\",\"key_usage\",\"algorithm\",\"mode_of_use\",\"key_version\",\n\
        \"exportability\",\"key_context\",\"optional_blocks\":[{\"id\",\"data\"}],\"key\",\"kcv\"}\n\
        kcv is 6 hex digits: legacy (TDES-ECB of zeros) for T/D keys, AES-CMAC for A keys,\n\
        HMAC-SHA-256 for H/I/J keys; null for asymmetric keys."
    )]
    Unwrap {
        #[command(flatten)]
        kbpk: KbpkArg,
        #[command(flatten)]
        profile: ProfileArg,
        /// The key block.
        block: String,
    },
    /// Build a key block around a clear key and print it.
    #[command(
        after_help = "The header gives version, usage, algorithm, mode of use, key version,\n\
        exportability, key context and optional blocks, e.g. D0000P0AE00E0000 or\n\
        D0000M7HC00N0100HM0621. Its length field is recomputed (write 0000); the block\n\
        count must match the blocks given. A PB block is added, resized or dropped as\n\
        alignment needs. KC and KP blocks with empty data (KC04, KP04) are filled with the\n\
        check value of the key and of the KBPK.\n\
        Without --padding the padding is random and the key length is hidden (TDES keys padded\n\
        to 24 bytes, AES keys to 32). With --padding those exact bytes follow the key, which\n\
        reproduces a published block byte for byte."
    )]
    Wrap {
        #[command(flatten)]
        kbpk: KbpkArg,
        /// The header of the block to build.
        #[arg(long)]
        header: String,
        /// The clear key in hex, or `-` to read it from standard input.
        #[arg(long)]
        key: String,
        /// Exact padding bytes in hex (for reproducing known blocks; never in production).
        #[arg(long)]
        padding: Option<String>,
        /// Allow versions A and C (deprecated TDES key variant binding).
        #[arg(long)]
        allow_legacy: bool,
        /// Pad only to the cipher block, not to the obfuscated key length.
        #[arg(long)]
        no_obfuscation: bool,
        #[command(flatten)]
        profile: ProfileArg,
    },
    /// Print a key block's header as JSON; no KBPK needed, nothing is decrypted.
    ///
    /// Structure only by default (lengths, fields, optional blocks), so any block a real HSM
    /// wrote can be looked at; --strict also applies the X9.143 rules and says which one fails.
    Inspect {
        /// Also check the X9.143 rules (usage table, optional block contents).
        #[arg(long)]
        strict: bool,
        /// The key block.
        block: String,
    },
    /// Print the check value of a clear key.
    Kcv {
        /// The key's algorithm as in a header: T (TDES), D (DES), A (AES), H (HMAC).
        #[arg(long, default_value = "A")]
        algorithm: char,
        /// The clear key in hex, or `-` to read it from standard input.
        #[arg(long)]
        key: String,
    },
}

#[derive(Debug, Args)]
struct KbpkArg {
    /// The key block protection key in hex (TDES for A/B/C, AES for D/E), or `-` to read it from
    /// standard input.
    #[arg(long)]
    kbpk: String,
}

#[derive(Debug, Args)]
struct ProfileArg {
    /// Accept what real HSMs emit beyond X9.143: lower-case hex, free-text KS, usage combinations
    /// outside the standard's table, single-length keys marked T. Authentication is unchanged.
    #[arg(long)]
    lenient: bool,
}

impl ProfileArg {
    const fn profile(&self) -> Profile {
        if self.lenient {
            Profile::Lenient
        } else {
            Profile::Strict
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let rendered = e.render().to_string();
            let line = rendered.lines().next().unwrap_or("invalid arguments");
            eprintln!("tr31: {}", line.trim_start_matches("error: "));
            return ExitCode::FAILURE;
        }
    };
    let mut stdin = std::io::stdin().lock();
    match run(cli.command, &mut stdin) {
        Ok(output) => {
            let mut out = std::io::stdout().lock();
            match writeln!(out, "{}", output.as_str()).and_then(|()| out.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tr31: cannot write the output: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(message) => {
            eprintln!("tr31: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one command and returns what to print. The output may hold a clear key, so it lives in
/// a zeroizing buffer.
fn run(command: Command, stdin: &mut dyn BufRead) -> Result<Zeroizing<String>, String> {
    match command {
        Command::Unwrap {
            kbpk,
            profile,
            block,
        } => {
            let kbpk = Kbpk::from_hex(&secret_arg(&kbpk.kbpk, stdin)?).map_err(text)?;
            let opened =
                tr31::open(block.trim(), &kbpk, profile.profile()).map_err(|e| match e {
                    // Contract section 11: a wrong KBPK reads like a wrong MAC, whatever its length.
                    tr31::Error::Kbpk(_) => text(tr31::Error::Authentication),
                    other => text(other),
                })?;
            let kcv = tr31::kcv::for_algorithm(opened.header.algorithm, opened.key.expose_secret());
            let mut json = header_json(&opened.header);
            // Written straight into the zeroizing buffer: no other copy of the key is made.
            json.push_str(",\"key\":\"");
            json.push_str(opened.key.to_hex().as_str());
            json.push_str("\",\"kcv\":");
            json.push_str(&kcv.map_or_else(|| "null".to_owned(), |v| json_str(&hex(&v))));
            json.push('}');
            Ok(json)
        }
        Command::Wrap {
            kbpk,
            header,
            key,
            padding,
            allow_legacy,
            no_obfuscation,
            profile,
        } => {
            let kbpk = Kbpk::from_hex(&secret_arg(&kbpk.kbpk, stdin)?).map_err(text)?;
            let key = Key::from_hex(&secret_arg(&key, stdin)?).map_err(text)?;
            let header = Header::parse(header.trim(), profile.profile()).map_err(text)?;
            let options = SealOptions {
                profile: profile.profile(),
                allow_legacy,
                obfuscate: !no_obfuscation,
            };
            let block = match padding {
                Some(p) => {
                    let bytes =
                        decode_hex(&p).ok_or("--padding is not an even number of hex digits")?;
                    tr31::seal(&kbpk, &header, &key, &options, Padding::Exact(&bytes))
                }
                None => tr31::seal(
                    &kbpk,
                    &header,
                    &key,
                    &options,
                    Padding::Random(&mut tr31::OsRandom),
                ),
            }
            .map_err(text)?;
            Ok(Zeroizing::new(block))
        }
        Command::Inspect { strict, block } => {
            let profile = if strict {
                Profile::Strict
            } else {
                Profile::Lenient
            };
            let parsed = KeyBlock::parse(block.trim(), profile).map_err(text)?;
            let mut json = header_json(parsed.header());
            json.push('}');
            Ok(json)
        }
        Command::Kcv { algorithm, key } => {
            let key = Key::from_hex(&secret_arg(&key, stdin)?).map_err(text)?;
            let byte = u8::try_from(algorithm).map_err(|_| "--algorithm is one letter")?;
            let kcv =
                tr31::kcv::for_algorithm(tr31::Algorithm::from_byte(byte), key.expose_secret())
                    .ok_or("no check value for this algorithm and key length")?;
            Ok(Zeroizing::new(hex(&kcv)))
        }
    }
}

/// The argument itself, or a line of standard input for `-`.
fn secret_arg(arg: &str, stdin: &mut dyn BufRead) -> Result<Zeroizing<String>, String> {
    if arg != "-" {
        return Ok(Zeroizing::new(arg.to_owned()));
    }
    let mut line = Zeroizing::new(String::new());
    match stdin.read_line(&mut line) {
        Ok(0) => Err("standard input ended before a secret was read".to_owned()),
        Ok(_) => Ok(Zeroizing::new(line.trim().to_owned())),
        Err(_) => Err("cannot read standard input".to_owned()),
    }
}

/// The header fields as a JSON object without its closing brace, in the contract's order
/// (easier to read than sorted keys).
fn header_json(header: &Header) -> Zeroizing<String> {
    let blocks: Vec<String> = header
        .optional_blocks
        .iter()
        .map(|b| {
            format!(
                "{{\"id\":{},\"data\":{}}}",
                json_str(b.id().as_str()),
                json_str(b.data())
            )
        })
        .collect();
    let fields = [
        ("version", json_str(&header.version.to_string())),
        ("key_usage", json_str(header.key_usage.as_str())),
        ("algorithm", json_str(&header.algorithm.to_string())),
        ("mode_of_use", json_str(&header.mode_of_use.to_string())),
        ("key_version", json_str(header.key_version.as_str())),
        ("exportability", json_str(&header.exportability.to_string())),
        ("key_context", json_str(&header.key_context.to_string())),
        ("optional_blocks", format!("[{}]", blocks.join(","))),
    ];
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{v}", json_str(k)))
        .collect();
    Zeroizing::new(format!("{{{}", body.join(",")))
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) || !text.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|p| u8::from_str_radix(p, 16).ok())
        })
        .collect()
}

fn text(e: tr31::Error) -> String {
    e.to_string()
}
