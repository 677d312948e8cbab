//! PIN blocks as a terminal or an acquirer could send them: arbitrary bytes as a format 4 or a
//! format 0 block (and an arbitrary PAN) through decipherment and translation, and arbitrary
//! messages through the retail MAC. Must never panic; a block that opens must re-encode to the
//! same PIN.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paycrypto::{AesKey, Pan, TdesKey};

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let (pan_bytes, block) = rest.split_at((split as usize).min(rest.len()));
    let Ok(pan) = std::str::from_utf8(pan_bytes)
        .map_err(|_| ())
        .and_then(|t| Pan::new(t).map_err(|_| ()))
    else {
        let zak = TdesKey::new(b"FEDCBA9876543210").expect("zak");
        let mac = paycrypto::retail_mac(&zak, rest);
        assert!(paycrypto::verify_retail_mac(&zak, rest, &mac));
        return;
    };
    let tpk = AesKey::new(&[0x11; 32]).expect("tpk");
    let zpk = TdesKey::new(b"0123456789ABCDEF").expect("zpk");
    if let Ok(block4) = <[u8; 16]>::try_from(block) {
        if let Ok(pin) = paycrypto::decipher_format4(&tpk, &block4, &pan) {
            let out = paycrypto::translate_4_to_0(&tpk, &block4, &pan, &zpk).expect("opened once");
            assert!(paycrypto::decipher_format0(&zpk, &out, &pan).expect("re-encoded") == pin);
        }
    }
    if let Ok(block0) = <[u8; 8]>::try_from(block) {
        let _ = paycrypto::decipher_format0(&zpk, &block0, &pan);
    }
});
