//! What one step has taken so far: prefill tokens, staging blocks per layer, modelled seconds.

/// The running totals of the step being planned, and the limits they must stay within.
#[derive(Debug, Clone)]
pub(super) struct StepBudget {
    max_prefill_tokens: usize,
    staging_blocks: usize,
    prefill_tokens: usize,
    /// Staging blocks taken per layer, by streams and staged prefills.
    staging_used: Vec<usize>,
    /// Modelled seconds of the step: its decodes plus the prefills added so far.
    pub(super) seconds: f64,
}

impl StepBudget {
    pub(super) fn new(layers: usize, max_prefill_tokens: usize, staging_blocks: usize) -> Self {
        StepBudget {
            max_prefill_tokens,
            staging_blocks,
            prefill_tokens: 0,
            staging_used: vec![0; layers],
            seconds: 0.0,
        }
    }

    /// A prefill of `tokens` fits the step's token budget (the first always does).
    pub(super) fn fits_tokens(&self, tokens: usize) -> bool {
        self.prefill_tokens == 0 || self.prefill_tokens + tokens <= self.max_prefill_tokens
    }

    /// Each of `layers` can stage `blocks` more without passing `limit` (at most the staging
    /// area itself).
    pub(super) fn fits_staging(&self, layers: &[usize], blocks: usize, limit: usize) -> bool {
        let limit = limit.min(self.staging_blocks);
        layers
            .iter()
            .all(|&l| self.staging_used[l] + blocks <= limit)
    }

    /// The whole staging area, for `fits_staging`.
    pub(super) fn staging_limit(&self) -> usize {
        self.staging_blocks
    }

    /// Takes `blocks` of staging on each of `layers`.
    pub(super) fn take_staging(&mut self, layers: &[usize], blocks: usize) {
        for &l in layers {
            self.staging_used[l] += blocks;
        }
    }

    /// Adds a prefill of `tokens` taking `seconds`, its staged layers already taken.
    pub(super) fn add_prefill(&mut self, tokens: usize, seconds: f64) {
        self.prefill_tokens += tokens;
        self.seconds += seconds;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_tokens_and_staging() {
        let mut b = StepBudget::new(2, 100, 10);
        assert!(b.fits_tokens(500), "the first prefill always fits");
        b.add_prefill(60, 1.5);
        assert!(b.fits_tokens(40) && !b.fits_tokens(41));
        assert!(b.fits_staging(&[0, 1], 10, usize::MAX));
        b.take_staging(&[1], 7);
        assert!(b.fits_staging(&[0], 10, usize::MAX) && !b.fits_staging(&[0, 1], 4, usize::MAX));
        assert!(!b.fits_staging(&[0], 6, 5));
        assert_eq!(b.seconds, 1.5);
    }
}
