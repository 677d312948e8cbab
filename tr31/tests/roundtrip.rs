//! Property tests: whatever is sealed opens to the same key and header, for every version, every
//! KBPK size and every key length, with and without obfuscation, with optional blocks of any
//! printable content, short or extended length.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test helpers fail loudly"
)]

use proptest::prelude::*;
use tr31::{
    Algorithm, BlockId, Exportability, Header, Kbpk, Key, KeyBlock, KeyUsage, ModeOfUse,
    OptionalBlock, Padding, PaddingSource, Profile, SealOptions, Version,
};

/// Deterministic padding for the property runs (the real source is the OS CSPRNG).
struct Counter(u8);

impl PaddingSource for Counter {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), tr31::Error> {
        for b in dest {
            self.0 = self.0.wrapping_mul(31).wrapping_add(7);
            *b = self.0;
        }
        Ok(())
    }
}

fn version() -> impl Strategy<Value = Version> {
    prop_oneof![
        Just(Version::A),
        Just(Version::B),
        Just(Version::C),
        Just(Version::D),
        Just(Version::E)
    ]
}

fn kbpk_len(version: Version) -> BoxedStrategy<usize> {
    match version {
        Version::D | Version::E => prop_oneof![Just(16usize), Just(24), Just(32)].boxed(),
        _ => prop_oneof![Just(16usize), Just(24)].boxed(),
    }
}

/// A key that the strict profile accepts under the KBPK: algorithm, usage, mode, length.
fn key_spec(
    kbpk_len: usize,
    aes_kbpk: bool,
) -> BoxedStrategy<(Algorithm, KeyUsage, ModeOfUse, usize)> {
    let tdes_max = if aes_kbpk || kbpk_len == 24 { 24 } else { 16 };
    let aes_max = if aes_kbpk { kbpk_len } else { 0 };
    let mut choices: Vec<BoxedStrategy<(Algorithm, KeyUsage, ModeOfUse, usize)>> = vec![
        prop::sample::select(
            vec![16usize, 24]
                .into_iter()
                .filter(|l| *l <= tdes_max)
                .collect::<Vec<_>>(),
        )
        .prop_map(|l| {
            (
                Algorithm::TDES,
                KeyUsage::PIN_ENCRYPTION,
                ModeOfUse::ENCRYPT_ONLY,
                l,
            )
        })
        .boxed(),
        (1usize..=64)
            .prop_map(|l| {
                (
                    Algorithm::HMAC,
                    KeyUsage::HMAC,
                    ModeOfUse::GENERATE_VERIFY,
                    l,
                )
            })
            .boxed(),
    ];
    if aes_max > 0 {
        choices.push(
            prop::sample::select(
                vec![16usize, 24, 32]
                    .into_iter()
                    .filter(|l| *l <= aes_max)
                    .collect::<Vec<_>>(),
            )
            .prop_map(|l| {
                (
                    Algorithm::AES,
                    KeyUsage::DATA_ENCRYPTION,
                    ModeOfUse::BOTH_ENCRYPT_DECRYPT,
                    l,
                )
            })
            .boxed(),
        );
    }
    prop::strategy::Union::new(choices).boxed()
}

fn label() -> impl Strategy<Value = Option<String>> {
    prop::option::of(
        prop::collection::vec(0x20u8..=0x7E, 0..300)
            .prop_map(|v| v.into_iter().map(char::from).collect::<String>()),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn seal_then_open_gives_back_key_and_header(
        (version, kbpk_len, (algorithm, usage, mode, key_len)) in version()
            .prop_flat_map(|v| (Just(v), kbpk_len(v)))
            .prop_flat_map(|(v, k)| (Just(v), Just(k), key_spec(k, matches!(v, Version::D | Version::E)))),
        kbpk_seed in any::<[u8; 32]>(),
        key_seed in prop::collection::vec(any::<u8>(), 64),
        label in label(),
        with_kc in any::<bool>(),
        obfuscate in any::<bool>(),
        pad_seed in any::<u8>(),
    ) {
        let kbpk = Kbpk::new(&kbpk_seed[..kbpk_len]).unwrap();
        let key = Key::new(&key_seed[..key_len]).unwrap();
        let mut header = Header::new(version, usage, algorithm, mode, Exportability::EXPORTABLE);
        if algorithm == Algorithm::HMAC {
            header.optional_blocks.push(OptionalBlock::new(BlockId::HM, "21").unwrap());
        }
        if with_kc && algorithm != Algorithm::HMAC {
            header.optional_blocks.push(OptionalBlock::new(BlockId::KC, "").unwrap());
        }
        if let Some(label) = label {
            header.optional_blocks.push(OptionalBlock::new(BlockId::LB, label).unwrap());
        }
        let options = SealOptions { profile: Profile::Strict, allow_legacy: true, obfuscate };
        let block = tr31::seal(&kbpk, &header, &key, &options, Padding::Random(&mut Counter(pad_seed))).unwrap();

        prop_assert!(block.len() <= 9999);
        prop_assert_eq!(block.len(), block[1..5].parse::<usize>().unwrap());
        let opened = tr31::open(&block, &kbpk, Profile::Strict).unwrap();
        prop_assert!(opened.key.ct_eq(&key));
        // The header comes back with KC filled in and PB added as needed; everything else equal.
        let mut got = opened.header;
        got.optional_blocks.retain(|b| b.id() != BlockId::PB && b.id() != BlockId::KC);
        let mut want = header.clone();
        want.optional_blocks.retain(|b| b.id() != BlockId::KC);
        prop_assert_eq!(got, want);
        // Inspecting and re-sealing the parsed header with the same padding reproduces the block.
        let parsed = KeyBlock::parse(&block, Profile::Strict).unwrap().into_header();
        let again = tr31::seal(&kbpk, &parsed, &key, &options, Padding::Random(&mut Counter(pad_seed))).unwrap();
        prop_assert_eq!(&again, &block);
        // Obfuscation hides the key length among keys of the same algorithm.
        if obfuscate && matches!(algorithm, Algorithm::TDES | Algorithm::AES) {
            let other_len = if algorithm == Algorithm::TDES { 24 } else { 32 };
            if other_len <= kbpk_len.max(if algorithm == Algorithm::TDES { 24 } else { 0 }) {
                let longer = Key::new(&key_seed[..other_len]).unwrap();
                if let Ok(other) = tr31::seal(&kbpk, &header, &longer, &options, Padding::Random(&mut Counter(pad_seed))) {
                    prop_assert_eq!(other.len(), block.len());
                }
            }
        }
    }

    #[test]
    fn open_never_panics_on_arbitrary_text(text in "[ -~]{0,200}", len in prop_oneof![Just(16usize), Just(24), Just(32)]) {
        let kbpk = Kbpk::new(&[0x11; 32][..len]).unwrap();
        let _ = tr31::open(&text, &kbpk, Profile::Strict);
        let _ = tr31::open(&text, &kbpk, Profile::Lenient);
    }

    #[test]
    fn open_never_panics_on_block_shaped_text(
        version in "[A-E0-9]",
        usage in "[A-Z0-9]{2}",
        rest in "[A-Z0-9]{6}",
        blocks in "[0-9]{2}",
        tail in "[0-9A-Fa-z]{0,160}",
    ) {
        let body = format!("{usage}{rest}{blocks}00{tail}");
        let text = format!("{version}{:04}{body}", body.len() + 5);
        let kbpk = Kbpk::new(&[0x22; 16]).unwrap();
        let _ = tr31::open(&text, &kbpk, Profile::Lenient);
        let _ = KeyBlock::parse(&text, Profile::Strict);
    }
}
