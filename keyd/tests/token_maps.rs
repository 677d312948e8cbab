//! The token's handle maps on a real SoftHSM token while they change from two sides at once:
//! `keyd serve` looks the token over again (its housekeeping after another node's change, or a
//! request that meets an LMK it does not know yet) while a request loads a zone's ZMK or an
//! officer's ceremony adds an LMK. A look that began before the change must not write back a
//! picture without it: a key loaded a moment ago would then be "not found" until the next
//! look, which is what a two-node LMK rewrap once showed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    reason = "tests fail loudly and say what they ran"
)]

use std::sync::atomic::{AtomicBool, Ordering};

use keyd::{Hsm, ZmkAlgorithm};

/// Set in the child process that opens the token (SoftHSM reads its configuration from the
/// environment, which the threads of a test process share).
const CHILD: &str = "KEYD_TOKEN_MAPS_CHILD";

#[test]
fn keys_added_while_the_token_is_looked_over_stay_usable() {
    let token = softhsm::SoftHsm::new("keyd-maps").unwrap();
    let out = token.run_child_test("maps_child", CHILD).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("token maps held") && text.contains("1 passed"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Set, with the check value of an LMK, in a process that destroys that LMK in the token.
const DESTROYER: &str = "KEYD_TOKEN_MAPS_DESTROY";

#[test]
#[ignore = "run in a process of its own by maps_child"]
fn destroyer_child() {
    let (Ok(pin), Ok(kcv)) = (std::env::var(CHILD), std::env::var(DESTROYER)) else {
        return;
    };
    let kcv: [u8; 3] = hex::decode(kcv).unwrap().try_into().unwrap();
    let module = softhsm::module_path().unwrap();
    let hsm = keyd::Pkcs11Hsm::open(&module, "keyd-maps", &pin, 1).unwrap();
    hsm.destroy_lmk(kcv).unwrap();
    println!("destroyed");
}

#[test]
#[ignore = "run in a process of its own by keys_added_while_the_token_is_looked_over_stay_usable"]
fn maps_child() {
    // Run alone by `--include-ignored`: nothing to do without the token.
    let Ok(pin) = std::env::var(CHILD) else {
        return;
    };
    let module = softhsm::module_path().unwrap();
    let hsm = keyd::Pkcs11Hsm::open(&module, "keyd-maps", &pin, 4).unwrap();
    hsm.create_lmk().unwrap();
    let done = AtomicBool::new(false);
    let looks = std::thread::scope(|s| {
        // Two lookers, as housekeeping and a request can be.
        let lookers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0u32;
                    while !done.load(Ordering::Acquire) {
                        hsm.refresh_zones().unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for i in 0..60u8 {
                let zone = format!("z{i}");
                hsm.import_zmk(&zone, ZmkAlgorithm::Aes, &[i; 32]).unwrap();
                // Usable at once, and still there after the lookers' next pictures.
                let kcv = hsm.zmk_kcv(&zone).unwrap_or_else(|e| {
                    panic!("zone {zone} just loaded: {e}");
                });
                assert_eq!(kcv, ZmkAlgorithm::Aes.kcv(&[i; 32]));
                let lmk = [i ^ 0xA5; 32];
                let added = hsm.add_lmk(Some(&lmk)).unwrap();
                hsm.lmk_cmac_under(Some(added), &[0; 16])
                    .unwrap_or_else(|e| panic!("LMK {i} just added: {e}"));
                if i % 3 == 0 {
                    // Destroyed ones do not come back from a picture taken before.
                    hsm.destroy_zmk(&zone).unwrap();
                    hsm.destroy_lmk(added).unwrap();
                    assert!(!hsm.zones().contains(&zone), "zone {zone} came back");
                    assert!(!hsm.lmks().0.contains(&added), "LMK {i} came back");
                }
            }
        }));
        done.store(true, Ordering::Release);
        let looks: u32 = lookers.into_iter().map(|l| l.join().unwrap()).sum();
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
        looks
    });
    // The lookers ran while keys came and went (or the test showed nothing).
    assert!(looks >= 2, "only {looks} looks over the token");
    // Everything kept is there, in this process and in a fresh one.
    let expect: Vec<String> = {
        let mut v: Vec<String> = (0..60u8)
            .filter(|i| i % 3 != 0)
            .map(|i| format!("z{i}"))
            .collect();
        v.sort();
        v
    };
    assert_eq!(hsm.zones(), expect);
    assert_eq!(hsm.lmks().0.len(), 1 + 40);
    // An LMK another process destroys is gone from the next look, which does not fail.
    let doomed = hsm.lmks().0[7];
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "destroyer_child", "--ignored", "--nocapture"])
        .env(DESTROYER, hex::encode(doomed))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("destroyed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(hsm.lmks().0.contains(&doomed), "not looked at again yet");
    hsm.refresh_zones().unwrap();
    assert!(!hsm.lmks().0.contains(&doomed));
    assert_eq!(hsm.lmks().0.len(), 40);
    assert_eq!(hsm.zones(), expect);
    drop(hsm);
    let again = keyd::Pkcs11Hsm::open(&module, "keyd-maps", &pin, 1).unwrap();
    assert_eq!(again.zones(), expect);
    assert_eq!(again.lmks().0.len(), 40);
    println!("token maps held across {looks} looks");
}
