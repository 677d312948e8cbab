//! Arbitrary text as a key block, in both profiles, opened under a fixed KBPK of each size.
//! Must never panic; a block that opens must seal again and reopen to the same key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tr31::{Kbpk, Padding, Profile, SealOptions};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = core::str::from_utf8(data) else { return };
    for len in [16, 24, 32] {
        let kbpk = Kbpk::new(&[0x5A; 32][..len]).expect("valid length");
        for profile in [Profile::Strict, Profile::Lenient] {
            if let Ok(opened) = tr31::open(text, &kbpk, profile) {
                let options = SealOptions { profile, allow_legacy: true, obfuscate: true };
                if let Ok(again) = tr31::seal(&kbpk, &opened.header, &opened.key, &options, Padding::Random(&mut Zeros)) {
                    let reopened = tr31::open(&again, &kbpk, profile).expect("a sealed block opens");
                    assert!(reopened.key.ct_eq(&opened.key));
                }
            }
        }
    }
});

struct Zeros;

impl tr31::PaddingSource for Zeros {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), tr31::Error> {
        dest.fill(0);
        Ok(())
    }
}
