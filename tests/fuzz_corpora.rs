//! The fuzzers' smoke run for CI (stable Rust, no libFuzzer): every input of the committed
//! corpora (`fuzz/corpus/<target>/`, grown by `cargo fuzz`) goes through its entry point,
//! then a bounded number of seeded mutations of them (bit flips, byte writes, cuts,
//! splices), so a regression in a parser of hostile input fails here within seconds.
//! Bounded by count and time; a failure names the seed and the round to replay it.

use std::path::Path;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// Mutated inputs per target, and the longest any target may take.
const ROUNDS: usize = 30_000;
const BUDGET: Duration = Duration::from_secs(20);
const SEED: u64 = 0x6e65_7464;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "empty corpus {}", dir.display());
    inputs
}

fn mutate(rng: &mut ChaCha20Rng, inputs: &[Vec<u8>]) -> Vec<u8> {
    let mut input = inputs[rng.random_range(0..inputs.len())].clone();
    for _ in 0..rng.random_range(1..=4) {
        match rng.random_range(0..5) {
            0 if !input.is_empty() => {
                let at = rng.random_range(0..input.len());
                input[at] ^= 1 << rng.random_range(0..8);
            }
            1 if !input.is_empty() => {
                let at = rng.random_range(0..input.len());
                input[at] = rng.random();
            }
            2 if !input.is_empty() => {
                let len = rng.random_range(0..=input.len());
                input.truncate(len);
            }
            3 => {
                let other = &inputs[rng.random_range(0..inputs.len())];
                let from = rng.random_range(0..=other.len());
                input.extend_from_slice(&other[from..]);
            }
            _ => {
                let at = rng.random_range(0..=input.len());
                input.insert(at, rng.random());
            }
        }
    }
    input
}

fn smoke(target: &str, run: fn(&[u8])) {
    let inputs = corpus(target);
    for input in &inputs {
        run(input);
    }
    let mut rng = ChaCha20Rng::seed_from_u64(SEED);
    let started = Instant::now();
    for round in 0..ROUNDS {
        let input = mutate(&mut rng, &inputs);
        let caught = std::panic::catch_unwind(|| run(&input));
        assert!(
            caught.is_ok(),
            "{target}: seed {SEED:#x} round {round} panicked on {input:?}"
        );
        if started.elapsed() > BUDGET {
            println!("{target}: stopped at round {round} (time budget)");
            break;
        }
    }
    println!(
        "{target}: {} corpus inputs, mutations in {:?}",
        inputs.len(),
        started.elapsed()
    );
}

#[test]
fn frames() {
    smoke("frame", netd::fuzzing::frame);
}

#[test]
fn topologies() {
    smoke("topology", netd::fuzzing::topology);
}

#[test]
fn requests() {
    smoke("request", netd::fuzzing::request);
}
