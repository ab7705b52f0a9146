//! The random draws of the workload: which app a request is for (Zipf), and how long things
//! take (exponential). Every draw takes the run's one RNG, so a seed replays the workload.

use rand::Rng;

use super::clock::Micros;

/// Zipf's law over ranks `0..count`: rank `k` (0-based) is drawn with probability proportional
/// to `1 / (k + 1)^exponent`. Exact: an inverse-CDF table searched by bisection.
#[derive(Clone, Debug)]
pub struct Zipf {
    /// `cdf[k]` is the probability of drawing a rank `<= k`; the last entry is 1.
    cdf: Vec<f64>,
}

impl Zipf {
    /// The distribution over `count` ranks. Precondition: `count >= 1` and `exponent` is finite
    /// and not negative (0 is uniform).
    pub fn new(count: usize, exponent: f64) -> Self {
        assert!(count >= 1, "zipf needs at least one rank");
        assert!(
            exponent.is_finite() && exponent >= 0.0,
            "zipf exponent must be finite and >= 0"
        );
        let weights: Vec<f64> = (1..=count)
            .map(|rank| (rank as f64).powf(-exponent))
            .collect();
        let total: f64 = weights.iter().sum();
        let mut running = 0.0;
        let mut cdf: Vec<f64> = weights
            .iter()
            .map(|w| {
                running += w;
                running / total
            })
            .collect();
        *cdf.last_mut().expect("count >= 1") = 1.0;
        Self { cdf }
    }

    /// Number of ranks.
    pub fn len(&self) -> usize {
        self.cdf.len()
    }

    /// Always false: a distribution has at least one rank.
    pub fn is_empty(&self) -> bool {
        self.cdf.is_empty()
    }

    /// The probability of rank `k` (0-based).
    pub fn probability(&self, k: usize) -> f64 {
        let below = if k == 0 { 0.0 } else { self.cdf[k - 1] };
        self.cdf[k] - below
    }

    /// Draws a rank (0 is the most popular).
    pub fn sample(&self, rng: &mut impl Rng) -> usize {
        let u: f64 = rng.gen();
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len() - 1)
    }
}

/// An exponentially distributed duration with the given mean, rounded to whole microseconds.
pub fn exponential(rng: &mut impl Rng, mean: Micros) -> Micros {
    // 1 - u lies in (0, 1], so the logarithm is finite.
    let u: f64 = rng.gen();
    let draw = -(1.0 - u).ln() * mean as f64;
    draw.round() as Micros
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn zipf_probabilities_follow_the_power_law() {
        let zipf = Zipf::new(1_000, 1.0);
        let harmonic: f64 = (1..=1_000).map(|k| 1.0 / k as f64).sum();
        for k in [0, 1, 9, 99, 999] {
            let expected = 1.0 / ((k + 1) as f64 * harmonic);
            assert!((zipf.probability(k) - expected).abs() < 1e-12, "rank {k}");
        }
        let uniform = Zipf::new(4, 0.0);
        for k in 0..4 {
            assert!((uniform.probability(k) - 0.25).abs() < 1e-12);
        }
    }

    #[test]
    fn zipf_samples_have_the_expected_shape() {
        let zipf = Zipf::new(10_000, 1.0);
        let mut rng = StdRng::seed_from_u64(7);
        let draws = 400_000;
        let mut counts = vec![0u32; zipf.len()];
        for _ in 0..draws {
            counts[zipf.sample(&mut rng)] += 1;
        }
        // The head: each of the first ranks within 5 % of its expected count.
        for (k, &count) in counts.iter().enumerate().take(5) {
            let expected = zipf.probability(k) * f64::from(draws);
            let error = (f64::from(count) - expected).abs() / expected;
            assert!(error < 0.05, "rank {k}: {count} vs {expected:.0}");
        }
        // Rank 1 is drawn about twice as often as rank 2, ten times as often as rank 10.
        let ratio_2 = f64::from(counts[0]) / f64::from(counts[1]);
        let ratio_10 = f64::from(counts[0]) / f64::from(counts[9]);
        assert!((1.85..=2.15).contains(&ratio_2), "{ratio_2}");
        assert!((9.0..=11.0).contains(&ratio_10), "{ratio_10}");
        // The tail half (ranks 5,001..10,000) holds ln(2) / H(10,000), about 7.1 %.
        let tail: u32 = counts[5_000..].iter().sum();
        let share = f64::from(tail) / f64::from(draws);
        assert!((0.065..=0.077).contains(&share), "{share}");
    }

    #[test]
    fn exponential_has_the_requested_mean() {
        let mut rng = StdRng::seed_from_u64(3);
        let n = 200_000u64;
        let total: u64 = (0..n).map(|_| exponential(&mut rng, 20_000)).sum();
        let mean = total as f64 / n as f64;
        assert!((mean - 20_000.0).abs() < 200.0, "{mean}");
    }
}
