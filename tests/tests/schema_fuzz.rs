//! Schema-driven fuzzing: schemathesis reads the live `GET /openapi.json` and sends generated
//! requests (valid ones, and invalid ones for each part of a request) to every operation of a
//! running platform, then checks each answer against the same document: no 5xx, a documented
//! status, a documented content type, a body that matches the documented schema, documented
//! headers. The document is the contract's machine-readable half, so whatever schemathesis finds
//! is either an API bug or a document bug, and fails this test.
//!
//! The run is only as strict as the document: while a body is described as `{"type":"object"}`
//! little can be wrong with it, and every schema made stricter in `api/src/http/openapi.rs`
//! tightens this test with no change here.
//!
//! Needs `python3` with `venv` and `ensurepip` (Debian: `python3-venv`, which `scripts/test-all`
//! installs) and PyPI, once: schemathesis is installed into a virtualenv under the cargo target
//! directory and reused from then on. `SCHEMA_FUZZ_SEED` and `SCHEMA_FUZZ_MAX_EXAMPLES` change
//! the seed and the number of cases per operation, to dig deeper by hand.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    reason = "tests fail loudly and say what they ran"
)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::api::Platform;
use serde_json::{Value, json};

/// The schemathesis release the test runs: pinned, so that a new release's new checks or
/// changed generation cannot turn the build red on a day nothing here changed. Raising it is a
/// deliberate change (and makes a fresh virtualenv, see `schemathesis_python`).
const SCHEMATHESIS: &str = "4.32.5";

/// Cases per operation in the fuzzing phase, on top of the coverage phase's own fixed set:
/// about 4,300 requests and under a minute for today's 76 fuzzed operations on the project's two
/// cores.
const MAX_EXAMPLES: u32 = 30;

/// A fixed seed makes a red run repeatable on any machine; `SCHEMA_FUZZ_SEED` picks another.
const SEED: u64 = 1_213_031;

/// A run that takes longer than this has hung (a request without an answer, a stuck worker).
const RUN_LIMIT: Duration = Duration::from_secs(600);

/// The platform admin the run acts as. Not the harness's usual `ops`: fuzzed user bodies may
/// carry an `idp_subject`, and a short subject is the kind of string a generator produces, which
/// would bind the caller to a merchant user and change what the rest of the run may do.
const FUZZ_SUB: &str = "schema-fuzz-operator-5b1e0d7c";

/// The device the POS operations name in `X-Device-Id`.
const DEVICE: &str = "POS-5C4E3A11";

#[test]
fn the_live_api_answers_as_its_openapi_document_says() {
    // The virtualenv first: without schemathesis there is nothing to start the platform for.
    let python = schemathesis_python();
    let api_bin = PathBuf::from(env!("CARGO_BIN_EXE_pos-sim")).with_file_name("api");
    assert!(
        api_bin.exists(),
        "api is built with the workspace: cargo test --workspace"
    );
    let p = Platform::start(&api_bin, "").unwrap();
    let token = p.login(FUZZ_SUB, "platform_admin").unwrap();
    let world = World::seed(&p, &token);
    let operations = document_operations(&p);

    let seed = pyvenv::env_or("SCHEMA_FUZZ_SEED", SEED);
    let max_examples = pyvenv::env_or("SCHEMA_FUZZ_MAX_EXAMPLES", MAX_EXAMPLES);
    let dir = p.api.dir().join("schemathesis");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("schemathesis.toml");
    std::fs::write(&config, world.config(&token)).unwrap();

    let url = format!("http://127.0.0.1:{}/openapi.json", p.api.port());
    let args = [
        "-m".to_owned(),
        "schemathesis.cli".to_owned(),
        "--config-file".to_owned(),
        config.display().to_string(),
        "run".to_owned(),
        url,
        "--max-examples".to_owned(),
        max_examples.to_string(),
        "--seed".to_owned(),
        seed.to_string(),
        // One worker: the API, keyd and the generator share two cores with whatever else runs.
        "--workers".to_owned(),
        "1".to_owned(),
        "--request-timeout".to_owned(),
        "30".to_owned(),
        // No example database: a run is what the seed says, not what earlier runs left behind.
        "--generation-database".to_owned(),
        "none".to_owned(),
        "--no-color".to_owned(),
        // Send the token as it is. Generating the Authorization header as one more input
        // turned most cases of a GET with only path parameters into 401s, and the handlers
        // behind them went untested; the token checks have tests of their own for garbage,
        // forged and wrongly shaped tokens (api/tests, api/src/auth/jwt.rs).
        "--generation-with-security-parameters".to_owned(),
        "false".to_owned(),
    ];
    println!(
        "schemathesis {SCHEMATHESIS}: {} {}",
        python.display(),
        args.join(" ")
    );
    let started = Instant::now();
    let (status, stdout, stderr) = run_bounded(
        Command::new(&python)
            .args(&args)
            .current_dir(&dir)
            // Its report is full of non-ASCII marks; a C locale must not make it crash.
            .env("PYTHONUTF8", "1")
            .env("NO_COLOR", "1"),
        &dir,
        RUN_LIMIT,
    );
    println!("schemathesis took {:.0?}", started.elapsed());
    let report = format!("{stdout}\n{stderr}");
    let log = std::fs::read_to_string(p.api.log_path()).unwrap_or_default();
    let log = log.lines().rev().take(100).collect::<Vec<_>>();
    let log = log.into_iter().rev().collect::<Vec<_>>().join("\n");
    assert!(
        status == Some(0),
        "schemathesis found something (exit status {status:?}; seed {seed}, replay with \
         SCHEMA_FUZZ_SEED={seed}):\n{report}\n--- the api log, last lines ---\n{log}"
    );

    // A green exit is only worth something if it tested things: a document that lost its
    // paths, or filters that matched nothing, also exit 0.
    let summary = Summary::parse(&stdout)
        .unwrap_or_else(|| panic!("no summary in schemathesis's report:\n{report}"));
    println!("{summary:?}");
    assert!(
        summary.tested > 0 && summary.cases > 0,
        "schemathesis ran nothing:\n{report}"
    );
    // Nothing is filtered out of the run, so every operation of the document is tested but
    // one: schemathesis leaves out the operation that serves the document it was loaded from
    // (`GET /openapi.json`), since fuzzing it would only fetch the document again.
    let operations = operations - 1;
    assert_eq!(
        (summary.selected, summary.tested),
        (operations, operations),
        "the document has {operations} operations; not all were selected and tested:\n{report}"
    );
}

/// How many operations (path and method pairs) the live document describes.
fn document_operations(p: &Platform) -> u64 {
    let doc = p.http.call("GET", "/openapi.json", None, None).unwrap();
    assert_eq!(doc.status, 200, "GET /openapi.json: {}", doc.status);
    let paths = doc.json["paths"]
        .as_object()
        .expect("paths in the document");
    let methods = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];
    paths
        .values()
        .filter_map(Value::as_object)
        .map(|item| {
            item.keys()
                .filter(|k| methods.contains(&k.as_str()))
                .count() as u64
        })
        .sum()
}

/// What the run is given to reach real handlers: every id a path can name, twice over where an
/// operation can delete it.
struct World {
    reseller: String,
    merchant: String,
    template: String,
    location: String,
    device: String,
    merchant_user: String,
    reseller_user: String,
    client: String,
    charges: Vec<String>,
    refund: String,
    /// Objects nothing else depends on, named only to the DELETE operations: deleting the ones
    /// above would turn the rest of the run into 404s.
    spare: Spare,
}

struct Spare {
    reseller: String,
    template: String,
    location: String,
    merchant_user: String,
    reseller_user: String,
    client: String,
}

impl World {
    fn seed(p: &Platform, token: &str) -> Self {
        let call = |method: &str, path: &str, body: Value| -> Value {
            let a = p.http.call(method, path, Some(token), Some(&body)).unwrap();
            assert!(
                a.status < 300,
                "seeding {method} {path}: {} {}",
                a.status,
                a.json
            );
            a.json
        };
        let id = |v: &Value, field: &str| v[field].as_str().unwrap().to_owned();

        let reseller = id(&call("POST", "/resellers", json!({"name": "Fuzz R"})), "id");
        let fee = json!({"name": "standard", "percent_bps": 150,
                         "fixed": {"value": "20", "currency": "EUR"}});
        let templates = format!("/resellers/{reseller}/fee-templates");
        // The merchant uses this template, so deleting it is refused: a 409 path, not a loss.
        let template = id(&call("POST", &templates, fee.clone()), "id");
        let merchant = id(
            &call(
                "POST",
                "/merchants",
                json!({"reseller_id": reseller, "name": "Fuzz M", "mcc": "5812", "country": "DE",
                       "currency": "EUR", "fee_template_id": template}),
            ),
            "id",
        );
        let m = format!("/merchants/{merchant}");
        let place = json!({"name": "Front desk", "timezone": "Europe/Berlin",
                           "address": {"line1": "1 Fuzz Street", "city": "Berlin",
                                       "postal_code": "10115", "country": "DE"}});
        // The device stands here, so deleting it is refused as well.
        let location = id(
            &call("POST", &format!("{m}/locations"), place.clone()),
            "id",
        );
        let device = call(
            "POST",
            &format!("{m}/devices"),
            json!({"device_id": DEVICE, "model": "A920", "serial": "FUZZ-1",
                   "location_id": location, "zone": "z1"}),
        );
        let device = device["device"]["device_id"].as_str().unwrap().to_owned();
        let merchant_user = id(
            &call(
                "POST",
                &format!("{m}/users"),
                json!({"email": "clerk@example.com", "role": "merchant_user"}),
            ),
            "id",
        );
        let reseller_user = id(
            &call(
                "POST",
                &format!("/resellers/{reseller}/users"),
                json!({"email": "partner@example.com"}),
            ),
            "id",
        );
        let client = id(
            &call("POST", &format!("{m}/api-clients"), json!({})),
            "client_id",
        );

        // Two charges: one settled and refunded in part (refundable again, no longer voidable),
        // one approved (voidable), so both the refund and the cancel paths have something.
        let card = json!({"number": "4242424242424242", "exp_month": 12, "exp_year": 2030,
                          "cvc": "123"});
        let charge = |value: &str| {
            id(
                &call(
                    "POST",
                    "/charges",
                    json!({"merchant_id": merchant, "card": card,
                           "amount": {"value": value, "currency": "EUR"}}),
                ),
                "charge_id",
            )
        };
        let settled = charge("2500");
        call("POST", &format!("{m}/settlements"), json!({}));
        let refund = id(
            &call(
                "POST",
                &format!("/charges/{settled}/refund"),
                json!({"amount": {"value": "500", "currency": "EUR"}}),
            ),
            "refund_id",
        );
        let approved = charge("1000");

        let spare = Spare {
            reseller: id(
                &call("POST", "/resellers", json!({"name": "Spare R"})),
                "id",
            ),
            template: id(&call("POST", &templates, fee), "id"),
            location: id(&call("POST", &format!("{m}/locations"), place), "id"),
            merchant_user: id(
                &call(
                    "POST",
                    &format!("{m}/users"),
                    json!({"email": "spare@example.com", "role": "merchant_user"}),
                ),
                "id",
            ),
            reseller_user: id(
                &call(
                    "POST",
                    &format!("/resellers/{reseller}/users"),
                    json!({"email": "spare-partner@example.com"}),
                ),
                "id",
            ),
            client: id(
                &call("POST", &format!("{m}/api-clients"), json!({})),
                "client_id",
            ),
        };
        Self {
            reseller,
            merchant,
            template,
            location,
            device,
            merchant_user,
            reseller_user,
            client,
            charges: vec![settled, approved],
            refund,
            spare,
        }
    }

    /// The schemathesis configuration (TOML). Values are written as JSON strings and arrays,
    /// which TOML reads the same way for the ids and the token here (no control characters).
    fn config(&self, token: &str) -> String {
        let q = |s: &str| Value::from(s).to_string();
        let list = |items: &[&str]| json!(items).to_string();
        let mut c = String::new();

        // The bearer scheme of the document: only operations that declare it get the token, so
        // the public and POS operations are fuzzed as the callers they are meant for.
        writeln!(c, "[auth.openapi.bearer]\nbearer = {}\n", q(token)).unwrap();

        // The checks that compare answers with the document, and `negative_data_rejection`:
        // a body or parameter the document forbids must be refused. Left out:
        // `positive_data_acceptance`, because many valid-looking requests are refused by rules
        // a schema cannot state (an unknown cursor, a location of another merchant, a Luhn
        // check digit, a merchant that cannot be moved, a signature), and
        // `missing_required_header` and `ignored_auth`, because terminal calls authenticate
        // by headers and signatures the `pos_*` schemes only name.
        c.push_str("[checks]\nenabled = false\n");
        for check in [
            "not_a_server_error",
            "status_code_conformance",
            "content_type_conformance",
            "response_schema_conformance",
            "response_headers_conformance",
            "negative_data_rejection",
        ] {
            writeln!(c, "{check}.enabled = true").unwrap();
        }

        // Real ids for path parameters, query and body fields, drawn 4 times in 5: the fifth
        // draw stays random so that the unknown-id (404) paths are fuzzed too. A body binding
        // applies once the body schema names the field, so they start to bite as schemas grow.
        let dictionaries: [(&str, Vec<&str>); 9] = [
            ("resellers", vec![&self.reseller]),
            ("merchants", vec![&self.merchant]),
            ("templates", vec![&self.template]),
            ("locations", vec![&self.location]),
            ("devices", vec![&self.device]),
            ("users", vec![&self.merchant_user, &self.reseller_user]),
            ("clients", vec![&self.client]),
            (
                "charges",
                self.charges.iter().map(String::as_str).collect::<Vec<_>>(),
            ),
            (
                "transactions",
                self.charges
                    .iter()
                    .map(String::as_str)
                    .chain([self.refund.as_str()])
                    .collect(),
            ),
        ];
        c.push_str("\n[dictionaries]\n");
        for (name, values) in &dictionaries {
            writeln!(c, "{name} = {{ values = {} }}", list(values)).unwrap();
        }
        let spares: [(&str, Vec<&str>); 5] = [
            // The kept reseller has a merchant, so deleting it is refused; the spare one goes.
            (
                "delete_resellers",
                vec![&self.reseller, &self.spare.reseller],
            ),
            (
                "delete_templates",
                vec![&self.template, &self.spare.template],
            ),
            (
                "delete_locations",
                vec![&self.location, &self.spare.location],
            ),
            (
                "delete_users",
                vec![&self.spare.merchant_user, &self.spare.reseller_user],
            ),
            ("delete_clients", vec![&self.spare.client]),
        ];
        for (name, values) in &spares {
            writeln!(c, "{name} = {{ values = {} }}", list(values)).unwrap();
        }
        let bind = |key: &str, dictionary: &str| {
            format!(
                "{} = {{ dictionary = {}, probability = 0.8 }}",
                q(key),
                q(dictionary)
            )
        };
        c.push_str("\n[parameters]\n");
        for (key, dictionary) in [
            ("path.reseller_id", "resellers"),
            ("path.merchant_id", "merchants"),
            ("path.template_id", "templates"),
            ("path.location_id", "locations"),
            ("path.device_id", "devices"),
            ("path.user_id", "users"),
            ("path.client_id", "clients"),
            ("path.charge_id", "charges"),
            ("path.transaction_id", "transactions"),
            ("query.merchant_id", "merchants"),
            ("query.location_id", "locations"),
            ("body.merchant_id", "merchants"),
            ("body.reseller_id", "resellers"),
            ("body.parent_id", "resellers"),
            ("body.fee_template_id", "templates"),
            ("body.location_id", "locations"),
        ] {
            writeln!(c, "{}", bind(key, dictionary)).unwrap();
        }

        // DELETE operations draw from the spare objects (see `Spare`).
        let deletes = [
            ("path.reseller_id", "delete_resellers"),
            ("path.template_id", "delete_templates"),
            ("path.location_id", "delete_locations"),
            ("path.user_id", "delete_users"),
            ("path.client_id", "delete_clients"),
        ]
        .map(|(key, dictionary)| bind(key, dictionary))
        .join(", ");
        writeln!(
            c,
            "\n[[operations]]\ninclude-method = \"DELETE\"\nparameters = {{ {deletes} }}"
        )
        .unwrap();

        // Terminal calls: schemathesis cannot sign them (HMAC over a key the terminal gets
        // from key delivery), but with the POS headers and a registered device they get past
        // the header checks to the device lookup, the state checks and the signature check,
        // and bootstrap, pairing-code and status answer for real. Their refusals are the
        // contract's error bodies, which the document describes, so they stay in the run.
        writeln!(
            c,
            "\n[[operations]]\ninclude-path-regex = \"^/pos/\"\n\
             headers = {{ \"User-Agent\" = \"Viopay-POS/1.0.0 (schema-fuzz)\", \
             \"X-Client-Type\" = \"pos\", \"X-Device-Id\" = {} }}",
            q(&self.device)
        )
        .unwrap();

        c
    }
}

/// The counts in schemathesis's closing summary.
#[derive(Debug)]
struct Summary {
    selected: u64,
    tested: u64,
    cases: u64,
}

impl Summary {
    /// Reads `Selected: 77/77`, `Tested: 77` and `5507 generated, …` from the summary block.
    fn parse(stdout: &str) -> Option<Self> {
        let summary = stdout.rsplit_once("SUMMARY")?.1;
        let mut selected = None;
        let mut tested = None;
        let mut cases = None;
        for line in summary.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("Selected:") {
                selected = rest.trim().split('/').next()?.parse().ok();
            } else if let Some(rest) = line.strip_prefix("Tested:") {
                tested = rest.trim().parse().ok();
            } else if let Some((n, _)) = line.split_once(" generated") {
                cases = n.trim().parse().ok();
            }
        }
        Some(Self {
            selected: selected?,
            tested: tested?,
            cases: cases?,
        })
    }
}

/// Runs a command with its output in files (no pipe to fill up) and kills it past `limit`;
/// its exit code (`None` when killed by a signal), standard output and standard error.
fn run_bounded(
    command: &mut Command,
    dir: &Path,
    limit: Duration,
) -> (Option<i32>, String, String) {
    let out_path = dir.join("stdout.txt");
    let err_path = dir.join("stderr.txt");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", command.get_program()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "schemathesis did not finish within {limit:?}:\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    (
        status.code(),
        std::fs::read_to_string(&out_path).unwrap_or_default(),
        std::fs::read_to_string(&err_path).unwrap_or_default(),
    )
}

/// The virtualenv's python with schemathesis [`SCHEMATHESIS`], made once per pin under the
/// target directory. It is run as `python -m schemathesis.cli`, not through pip's console
/// script, whose first line names the scratch path the virtualenv was built in.
fn schemathesis_python() -> PathBuf {
    pyvenv::python(
        &target_dir(),
        &format!("py-schemathesis-{SCHEMATHESIS}"),
        &[&format!("schemathesis=={SCHEMATHESIS}")],
        |python| {
            Command::new(python)
                .args(["-m", "schemathesis.cli", "--version"])
                .output()
                .is_ok_and(|o| {
                    o.status.success()
                        && String::from_utf8_lossy(&o.stdout)
                            .trim_end()
                            .ends_with(&format!("version {SCHEMATHESIS}"))
                })
        },
    )
}

/// The cargo target directory (`CARGO_TARGET_DIR` or `target/`): the binaries live in its
/// profile directory, e.g. `target/debug/pos-sim`.
fn target_dir() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_pos-sim"));
    bin.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("the binaries live in <target>/<profile>/")
}
