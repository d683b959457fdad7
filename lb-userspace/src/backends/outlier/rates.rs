//! The interval detectors, as a service mesh (Envoy) defines them: success rate and failure
//! percentage over the requests each backend answered since the previous sweep.

/// Requests answered since the previous sweep, and how many of them failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IntervalCounts {
    pub requests: u64,
    pub failures: u64,
}

impl IntervalCounts {
    pub(super) fn add(&mut self, failure: bool) {
        self.requests += 1;
        self.failures += u64::from(failure);
    }

    fn success_percent(&self) -> f64 {
        100.0 * (self.requests - self.failures) as f64 / self.requests as f64
    }

    fn failure_percent(&self) -> f64 {
        100.0 * self.failures as f64 / self.requests as f64
    }
}

/// Which backends count: those with at least `request_volume` requests (and at least one),
/// and only when at least `minimum_hosts` backends have that many.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub minimum_hosts: u32,
    pub request_volume: u32,
}

impl Sample {
    fn of<K>(self, counts: &[(K, IntervalCounts)]) -> Vec<&(K, IntervalCounts)> {
        let valid: Vec<_> =
            counts.iter().filter(|(_, c)| c.requests >= u64::from(self.request_volume.max(1))).collect();
        if valid.len() < self.minimum_hosts.max(1) as usize { Vec::new() } else { valid }
    }
}

/// Backends whose success rate is below mean - `stdev_factor` / 1000 x stdev (the
/// population's), over the sampled backends.
pub fn success_rate_outliers<K: Clone>(counts: &[(K, IntervalCounts)], sample: Sample, stdev_factor: u32) -> Vec<K> {
    let valid = sample.of(counts);
    if valid.is_empty() {
        return Vec::new();
    }
    let rates: Vec<f64> = valid.iter().map(|(_, c)| c.success_percent()).collect();
    let mean = rates.iter().sum::<f64>() / rates.len() as f64;
    let variance = rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / rates.len() as f64;
    let threshold = mean - f64::from(stdev_factor) / 1000.0 * variance.sqrt();
    valid.iter().zip(rates).filter(|(_, rate)| *rate < threshold).map(|((k, _), _)| k.clone()).collect()
}

/// Backends whose failures are at least `threshold` percent of their requests, over the
/// sampled backends.
pub fn failure_percentage_outliers<K: Clone>(counts: &[(K, IntervalCounts)], sample: Sample, threshold: u32) -> Vec<K> {
    let valid = sample.of(counts);
    valid.iter().filter(|(_, c)| c.failure_percent() >= f64::from(threshold)).map(|(k, _)| k.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ten backends of 1000 requests: backend 0 fails 30%, backend 1 2%, the others 0%.
    fn ten_backends() -> Vec<(u32, IntervalCounts)> {
        let failures = |k: u32| match k {
            0 => 300,
            1 => 20,
            _ => 0,
        };
        (0..10).map(|k| (k, IntervalCounts { requests: 1000, failures: failures(k) })).collect()
    }

    const SAMPLE: Sample = Sample { minimum_hosts: 5, request_volume: 100 };

    #[test]
    fn success_rate_finds_the_backend_at_30_percent_not_the_one_at_2() {
        // Success rates 70, 98, 100 x 8: mean 96.8, stdev 8.96, threshold 79.8.
        assert_eq!(success_rate_outliers(&ten_backends(), SAMPLE, 1900), vec![0]);
    }

    #[test]
    fn failure_percentage_finds_the_backend_at_30_percent_not_the_one_at_2() {
        assert_eq!(failure_percentage_outliers(&ten_backends(), SAMPLE, 20), vec![0]);
        assert_eq!(failure_percentage_outliers(&ten_backends(), SAMPLE, 2), vec![0, 1]);
        assert_eq!(failure_percentage_outliers(&ten_backends(), SAMPLE, 31), Vec::<u32>::new());
    }

    #[test]
    fn too_few_backends_with_enough_requests_find_nothing() {
        let mut counts = ten_backends();
        for (_, c) in &mut counts[4..] {
            *c = IntervalCounts { requests: 99, failures: 0 };
        }
        assert_eq!(success_rate_outliers(&counts, SAMPLE, 1900), Vec::<u32>::new());
        assert_eq!(failure_percentage_outliers(&counts, SAMPLE, 20), Vec::<u32>::new());
        let four_hosts = Sample { minimum_hosts: 4, ..SAMPLE };
        assert_eq!(failure_percentage_outliers(&counts, four_hosts, 20), vec![0]);
    }

    #[test]
    fn equal_success_rates_find_nothing() {
        let counts: Vec<_> = (0..6).map(|k| (k, IntervalCounts { requests: 200, failures: 100 })).collect();
        assert_eq!(success_rate_outliers(&counts, SAMPLE, 0), Vec::<u32>::new());
    }
}
