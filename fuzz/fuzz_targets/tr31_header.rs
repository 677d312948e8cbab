//! Arbitrary text as a stand-alone header: parse, and re-encode what parses through a seal.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = core::str::from_utf8(data) else { return };
    for profile in [tr31::Profile::Strict, tr31::Profile::Lenient] {
        if let Ok(header) = tr31::Header::parse(text, profile) {
            for block in &header.optional_blocks {
                let _ = block.content();
            }
            let _ = header.encoded_len();
        }
    }
});
