//! Summaries of benchmark samples that claim no more than the samples
//! hold: a p99 only from at least 1,000 samples (below that the 99th
//! percentile is just one of the few largest values), otherwise the
//! maximum, labelled "max of N".

/// The fewest samples a p99 is reported from.
pub const P99_MIN_SAMPLES: usize = 1_000;

/// Order statistics of a set of samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// How many samples.
    pub n: usize,
    /// Smallest.
    pub min: f64,
    /// Median.
    pub median: f64,
    /// The 99th percentile, only with at least [`P99_MIN_SAMPLES`].
    pub p99: Option<f64>,
    /// Largest.
    pub max: f64,
}

impl Summary {
    /// Summarise `samples` (NaN sorts last). `None` when there are none.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let at = |q: f64| {
            // Nearest rank: the smallest sample with at least q of them
            // at or below it.
            let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
            s[rank - 1]
        };
        (n > 0).then(|| Summary {
            n,
            min: s[0],
            median: at(0.5),
            p99: (n >= P99_MIN_SAMPLES).then(|| at(0.99)),
            max: s[n - 1],
        })
    }

    /// The tail: the p99 when there are enough samples for it, otherwise
    /// the maximum.
    pub fn tail(&self) -> f64 {
        self.p99.unwrap_or(self.max)
    }

    /// What [`Summary::tail`] is: "p99", or "max of N".
    pub fn tail_label(&self) -> String {
        match self.p99 {
            Some(_) => "p99".into(),
            None => format!("max of {}", self.n),
        }
    }

    /// As JSON: `n`, `min`, `median`, `max`, and `p99` (null below 1,000
    /// samples), each with `unit` appended to its key.
    pub fn json(&self, unit: &str) -> serde_json::Value {
        serde_json::json!({
            "n": self.n,
            format!("min_{unit}"): self.min,
            format!("median_{unit}"): self.median,
            format!("p99_{unit}"): self.p99,
            format!("max_{unit}"): self.max,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_p99_needs_a_thousand_samples() {
        let few: Vec<f64> = (1..=999).map(f64::from).collect();
        let s = Summary::of(&few).expect("samples");
        assert_eq!(s.p99, None);
        assert_eq!(s.tail(), 999.0);
        assert_eq!(s.tail_label(), "max of 999");
        let many: Vec<f64> = (1..=1000).map(f64::from).collect();
        let s = Summary::of(&many).expect("samples");
        assert_eq!(s.p99, Some(990.0));
        assert_eq!(s.median, 500.0);
        assert_eq!(s.tail_label(), "p99");
        assert_eq!(Summary::of(&[]), None);
    }
}
