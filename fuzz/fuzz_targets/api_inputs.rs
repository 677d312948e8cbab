//! The API's parsers of untrusted bytes: MSK request envelopes (the JSON, the hex, the KCV
//! check), envelope plaintexts (gzip with its 32 KiB cap, UTF-8, JSON), POS headers
//! (User-Agent, X-Timestamp, X-Signature), RFC 3339 times, URLs, strict JSON, query strings
//! and typed request bodies. The first byte
//! picks the parser. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let text = std::str::from_utf8(rest).ok();
    match which % 6 {
        0 => {
            let _ = api::pos::envelope::parse(rest, "ABC123");
        }
        1 => {
            let _ = api::pos::envelope::inner(rest, true);
        }
        2 => {
            let _ = api::pos::envelope::inner(rest, false);
        }
        3 => {
            if let Some(t) = text {
                let _ = api::pos::user_agent_version(t);
                let _ = api::pos::timestamp(t);
                let _ = api::pos::signature(t);
            }
        }
        4 => {
            if let Some(t) = text {
                let _ = api::wire::time::parse_rfc3339(t);
                let _ = api::wire::ids::pos_version(t);
                let _ = api::wire::url::parse(t);
            }
        }
        _ => {
            let _ = api::wire::json::parse(rest);
            if let Some(t) = text {
                let _ = api::request::parse_query(Some(t));
            }
            // The typed bodies, each reading every member and naming every problem.
            use api::wire::body::parse;
            let _ = parse::<api::backoffice::charges::ChargeCreate>(rest);
            let _ = parse::<api::backoffice::merchants::MerchantCreate>(rest);
            let _ = parse::<api::backoffice::fee_templates::FeeTemplateCreate>(rest);
            let _ = parse::<api::backoffice::branding::Domains>(rest);
            let _ = parse::<api::request::RefundRequest>(rest);
            let _ = parse::<api::pos::charges::PosCharge>(rest);
        }
    }
});
