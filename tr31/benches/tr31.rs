//! Micro-benchmarks of the crypto hot path: open (unwrap) and seal (wrap) of single key blocks,
//! every call from scratch (keys derived from the KBPK each time, nothing cached).
//!
//! `cargo bench -p tr31 --bench tr31`; results and machine in BENCHMARKS.md.

#![allow(clippy::unwrap_used, reason = "benchmark setup fails loudly")]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tr31::{Kbpk, Padding, Profile, SealOptions};

/// TR-31:2018 A.7.4: version D, AES-256 KBPK.
const D_KBPK: &str = "88E1AB2A2E3DD38C1FA039A536500CC8A87AB9D62DC92C01058FA79F44657DE6";
const D_BLOCK: &str = "D0112P0AE00E0000B82679114F470F540165EDFBF7E250FCEA43F810D215F8D207E2E417C07156A27E8E31DA05F7425509593D03A457DC34";
/// TR-31:2018 A.7.2.2: version B, 2-key TDES KBPK.
const B_KBPK: &str = "DD7515F2BFC17F85CE48F3CA25CB21F6";
const B_BLOCK: &str =
    "B0080P0TE00E000094B420079CC80BA3461F86FE26EFC4A3B8E4FA4C5F5341176EED7B727B8A248E";
/// TR-31:2018 A.7.2.1: version A.
const A_KBPK: &str = "89E88CF7931444F334BD7547FC3F380C";
const A_BLOCK: &str = "A0072P0TE00E0000F5161ED902807AF26F1D62263644BD24192FDB3193C730301CEE8701";
/// ISO 20038:2017 B.2: version E.
const E_KBPK: &str = "3235362D62697420414553207772617070696E67202849534F20323030333829";
const E_BLOCK: &str =
    "E0084B0TV16N0000B2AE5E26BBA7F246E84D5EA24167E208A6B66EF2E27E55A52DB52F0AEACB94C57547";

fn open(c: &mut Criterion) {
    let mut g = c.benchmark_group("open");
    g.throughput(Throughput::Elements(1));
    for (name, kbpk, block, profile) in [
        ("D_aes256_A.7.4", D_KBPK, D_BLOCK, Profile::Strict),
        ("B_tdes2_A.7.2.2", B_KBPK, B_BLOCK, Profile::Strict),
        ("A_tdes2_A.7.2.1", A_KBPK, A_BLOCK, Profile::Strict),
        ("E_aes256_B.2", E_KBPK, E_BLOCK, Profile::Lenient),
    ] {
        let kbpk = Kbpk::from_hex(kbpk).unwrap();
        g.bench_function(name, |b| {
            b.iter(|| tr31::open(black_box(block), black_box(&kbpk), profile).unwrap());
        });
    }
    g.finish();
}

fn seal(c: &mut Criterion) {
    let mut g = c.benchmark_group("seal");
    g.throughput(Throughput::Elements(1));
    let kbpk = Kbpk::from_hex(D_KBPK).unwrap();
    let opened = tr31::open(D_BLOCK, &kbpk, Profile::Strict).unwrap();
    let options = SealOptions::default();
    g.bench_function("D_aes256_os_random", |b| {
        b.iter(|| {
            tr31::seal(
                black_box(&kbpk),
                &opened.header,
                &opened.key,
                &options,
                Padding::Random(&mut tr31::OsRandom),
            )
            .unwrap()
        });
    });
    let mut buffered = tr31::BufferedOsRandom::new();
    g.bench_function("D_aes256_buffered_os_random", |b| {
        b.iter(|| {
            tr31::seal(
                black_box(&kbpk),
                &opened.header,
                &opened.key,
                &options,
                Padding::Random(&mut buffered),
            )
            .unwrap()
        });
    });
    let padding = [0x1Cu8; 30];
    g.bench_function("D_aes256_exact_padding", |b| {
        b.iter(|| {
            tr31::seal(
                black_box(&kbpk),
                &opened.header,
                &opened.key,
                &options,
                Padding::Exact(&padding),
            )
            .unwrap()
        });
    });
    g.finish();
}

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(1));
    g.bench_function("D_A.7.4", |b| {
        b.iter(|| tr31::KeyBlock::parse(black_box(D_BLOCK), Profile::Strict).unwrap());
    });
    g.finish();
}

criterion_group!(benches, open, seal, parse);
criterion_main!(benches);
