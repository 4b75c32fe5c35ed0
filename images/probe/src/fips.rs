//! The FIPS 140-2 statistical random number tests (section 4.9.1, with the long-run bound of
//! change notice 1), as rngtest runs them: each on one block of 20 000 bits. The SCS entropy
//! standard (scs-0101) asks that a guest's random source fails at most a few in a thousand.

/// One block: 20 000 bits.
pub const BLOCK_BYTES: usize = 2500;
const BITS: usize = BLOCK_BYTES * 8;

/// Which tests one block failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Failures {
    pub monobit: bool,
    pub poker: bool,
    pub runs: bool,
    pub long_run: bool,
}

impl Failures {
    pub fn any(&self) -> bool {
        self.monobit || self.poker || self.runs || self.long_run
    }
}

fn bit(block: &[u8; BLOCK_BYTES], i: usize) -> u8 {
    (block[i / 8] >> (7 - i % 8)) & 1
}

/// Monobit: the number of ones lies strictly between 9 725 and 10 275.
fn monobit(block: &[u8; BLOCK_BYTES]) -> bool {
    let ones: u32 = block.iter().map(|b| b.count_ones()).sum();
    ones > 9725 && ones < 10_275
}

/// Poker: the 5 000 four-bit nibbles, X = 16/5000 · Σ f(i)² − 5000 strictly between 2.16 and
/// 46.17.
fn poker(block: &[u8; BLOCK_BYTES]) -> bool {
    let mut counts = [0u64; 16];
    for b in block {
        counts[usize::from(b >> 4)] += 1;
        counts[usize::from(b & 0x0f)] += 1;
    }
    let sum: u64 = counts.iter().map(|c| c * c).sum();
    let x = 16.0 / 5000.0 * sum as f64 - 5000.0;
    x > 2.16 && x < 46.17
}

/// Runs of each length (1..=5, and 6 or more together) of zeros and of ones, each within its
/// interval; and no run of 26 or more (long run).
fn runs(block: &[u8; BLOCK_BYTES]) -> (bool, bool) {
    const BOUNDS: [(u32, u32); 6] = [
        (2315, 2685),
        (1114, 1386),
        (527, 723),
        (240, 384),
        (103, 209),
        (103, 209),
    ];
    let mut counts = [[0u32; 6]; 2];
    let mut longest = 0usize;
    let mut current = bit(block, 0);
    let mut length = 1usize;
    let mut close = |value: u8, length: usize, counts: &mut [[u32; 6]; 2]| {
        counts[usize::from(value)][length.min(6) - 1] += 1;
        longest = longest.max(length);
    };
    for i in 1..BITS {
        let b = bit(block, i);
        if b == current {
            length += 1;
        } else {
            close(current, length, &mut counts);
            current = b;
            length = 1;
        }
    }
    close(current, length, &mut counts);
    let within = counts.iter().all(|per_value| {
        per_value
            .iter()
            .zip(BOUNDS)
            .all(|(&n, (lo, hi))| n >= lo && n <= hi)
    });
    (within, longest < 26)
}

/// The four tests on one block.
pub fn check(block: &[u8; BLOCK_BYTES]) -> Failures {
    let (runs_ok, long_ok) = runs(block);
    Failures {
        monobit: !monobit(block),
        poker: !poker(block),
        runs: !runs_ok,
        long_run: !long_ok,
    }
}

/// Failures over many blocks, per test and in all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub blocks: u32,
    pub failed_blocks: u32,
    pub monobit: u32,
    pub poker: u32,
    pub runs: u32,
    pub long_run: u32,
}

impl Summary {
    pub fn add(&mut self, f: Failures) {
        self.blocks += 1;
        self.failed_blocks += u32::from(f.any());
        self.monobit += u32::from(f.monobit);
        self.poker += u32::from(f.poker);
        self.runs += u32::from(f.runs);
        self.long_run += u32::from(f.long_run);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: a decent generator, deterministic for the tests.
    fn random_block(seed: &mut u64) -> [u8; BLOCK_BYTES] {
        let mut block = [0u8; BLOCK_BYTES];
        for chunk in block.chunks_mut(8) {
            *seed ^= *seed >> 12;
            *seed ^= *seed << 25;
            *seed ^= *seed >> 27;
            let v = seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_be_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        block
    }

    #[test]
    fn good_random_data_passes_nearly_always() {
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        let mut summary = Summary::default();
        for _ in 0..1000 {
            summary.add(check(&random_block(&mut seed)));
        }
        assert_eq!(summary.blocks, 1000);
        // The tests are tuned for about 1 false failure in 1000 blocks per test.
        assert!(summary.failed_blocks <= 5, "{summary:?}");
    }

    #[test]
    fn constant_data_fails_every_test() {
        for byte in [0x00u8, 0xff] {
            let f = check(&[byte; BLOCK_BYTES]);
            assert_eq!(
                f,
                Failures {
                    monobit: true,
                    poker: true,
                    runs: true,
                    long_run: true
                },
                "{byte:#x}"
            );
        }
    }

    #[test]
    fn each_test_catches_its_own_flaw() {
        let mut seed = 42;
        let good = random_block(&mut seed);
        assert!(!check(&good).any());

        // A bias toward ones: monobit fails.
        let mut biased = good;
        for b in biased.iter_mut().step_by(3) {
            *b |= 0x11;
        }
        assert!(check(&biased).monobit);

        // Alternating bits: balanced, but every run has length 1 and the nibbles are two
        // values only.
        let f = check(&[0x55; BLOCK_BYTES]);
        assert!(!f.monobit && f.poker && f.runs && !f.long_run, "{f:?}");

        // One run of 26 zeros in otherwise good data: only the long-run test fails.
        let mut long = good;
        long[100..104].fill(0);
        long[99] &= 0xfc;
        let f = check(&long);
        assert!(f.long_run, "{f:?}");
        assert!(!f.monobit && !f.poker, "{f:?}");
        // 25 zeros is not a long run.
        let mut seed = 7;
        let mut edge = random_block(&mut seed);
        edge[200..203].fill(0); // 24 zeros
        edge[203] = 0x7f; // one more zero, then a one
        edge[199] |= 0x01; // a one before
        let (_, long_ok) = runs(&edge);
        assert!(long_ok);
    }

    #[test]
    fn summary_counts_blocks_and_tests() {
        let mut s = Summary::default();
        s.add(Failures::default());
        s.add(Failures {
            monobit: true,
            runs: true,
            ..Failures::default()
        });
        assert_eq!(
            s,
            Summary {
                blocks: 2,
                failed_blocks: 1,
                monobit: 1,
                poker: 0,
                runs: 1,
                long_run: 0
            }
        );
    }
}
