//! A small, fast, seedable PRNG (SplitMix64). Generated traffic must be identical for a seed on
//! every machine and version, so the algorithm is fixed here rather than borrowed.

#[derive(Clone, Debug)]
pub struct Rng(u64);

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5851_F42D_4C95_7F2D)
    }

    /// An independent stream for item `n` of stream `seed` (per prospect, per event).
    /// The start state is hashed: SplitMix64 streams started `n` increments apart would be
    /// shifted copies of each other, making neighbouring prospects behave alike.
    pub fn derive(seed: u64, n: u64) -> Rng {
        Rng(mix(seed ^ mix(n.wrapping_add(0x632B_E59B_D9B4_E019))))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.f64()
    }

    /// Uniform integer in [lo, hi] (inclusive).
    pub fn int(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// Exponentially distributed with the given mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.f64()).ln()
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next_u64() % items.len() as u64) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn derived_streams_are_not_shifted_copies() {
        let a: Vec<u64> = (0..8)
            .map({
                let mut r = Rng::derive(42, 7);
                move |_| r.next_u64()
            })
            .collect();
        let mut b = Rng::derive(42, 8);
        let b: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        for x in &a {
            assert!(!b.contains(x), "stream 8 repeats a draw of stream 7");
        }
    }

    #[test]
    fn same_seed_same_stream() {
        let (mut a, mut b) = (Rng::derive(1, 2), Rng::derive(1, 2));
        assert!((0..100).all(|_| a.next_u64() == b.next_u64()));
    }
}
