//! The layer ranges of a chain's stages.

use std::ops::Range;

/// A chain layout that does not tile the model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// No stages.
    #[error("a pipeline needs at least one stage")]
    Empty,
    /// A stage with no layers.
    #[error("stage {stage} has the empty layer range {start}..{end}")]
    EmptyStage {
        stage: usize,
        start: usize,
        end: usize,
    },
    /// A stage starts after the previous one ends.
    #[error(
        "stage {stage} starts at layer {start}, leaving layers {expected}..{start} to no stage"
    )]
    Gap {
        stage: usize,
        start: usize,
        expected: usize,
    },
    /// A stage starts before the previous one ends.
    #[error("stage {stage} starts at layer {start}, overlapping the layers up to {expected}")]
    Overlap {
        stage: usize,
        start: usize,
        expected: usize,
    },
    /// The stages end before or after the model's last layer.
    #[error("the stages cover layers 0..{end}; the model has {layers}")]
    Coverage { end: usize, layers: usize },
}

/// The stages of a chain, in order; they tile `0..model_layers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainLayout {
    stages: Vec<Range<usize>>,
    model_layers: usize,
}

impl ChainLayout {
    /// Checks that `stages` tile `0..model_layers` in order, without gaps or overlaps.
    pub fn new(stages: Vec<Range<usize>>, model_layers: usize) -> Result<Self, ChainError> {
        if stages.is_empty() {
            return Err(ChainError::Empty);
        }
        let mut expected = 0;
        for (stage, r) in stages.iter().enumerate() {
            if r.is_empty() {
                return Err(ChainError::EmptyStage {
                    stage,
                    start: r.start,
                    end: r.end,
                });
            }
            if r.start > expected {
                return Err(ChainError::Gap {
                    stage,
                    start: r.start,
                    expected,
                });
            }
            if r.start < expected {
                return Err(ChainError::Overlap {
                    stage,
                    start: r.start,
                    expected,
                });
            }
            expected = r.end;
        }
        if expected != model_layers {
            return Err(ChainError::Coverage {
                end: expected,
                layers: model_layers,
            });
        }
        Ok(ChainLayout {
            stages,
            model_layers,
        })
    }

    /// `model_layers` split into `stages` contiguous ranges of sizes differing by at most one,
    /// the earlier stages taking the remainder.
    pub fn even(model_layers: usize, stages: usize) -> Result<Self, ChainError> {
        if stages == 0 {
            return Err(ChainError::Empty);
        }
        let (base, extra) = (model_layers / stages, model_layers % stages);
        let mut start = 0;
        let ranges = (0..stages)
            .map(|s| {
                let len = base + usize::from(s < extra);
                let r = start..start + len;
                start += len;
                r
            })
            .collect();
        ChainLayout::new(ranges, model_layers)
    }

    pub fn stages(&self) -> &[Range<usize>] {
        &self.stages
    }

    pub fn model_layers(&self) -> usize {
        self.model_layers
    }

    /// Layer slots the driver accounts KV for: the longest stage's layer count.
    pub fn slots(&self) -> usize {
        self.stages.iter().map(|r| r.len()).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_are_checked() {
        let ok = ChainLayout::new(vec![0..3, 3..5, 5..8], 8).unwrap();
        assert_eq!(ok.slots(), 3);
        assert_eq!(
            ChainLayout::new(vec![0..3, 4..8], 8),
            Err(ChainError::Gap {
                stage: 1,
                start: 4,
                expected: 3
            })
        );
        assert_eq!(
            ChainLayout::new(vec![0..4, 3..8], 8),
            Err(ChainError::Overlap {
                stage: 1,
                start: 3,
                expected: 4
            })
        );
        assert_eq!(
            ChainLayout::new(std::iter::once(0..4).collect(), 8),
            Err(ChainError::Coverage { end: 4, layers: 8 })
        );
        assert!(matches!(
            ChainLayout::new(vec![0..0, 0..8], 8),
            Err(ChainError::EmptyStage { .. })
        ));
        assert_eq!(ChainLayout::new(vec![], 8), Err(ChainError::Empty));
    }

    #[test]
    fn even_split_gives_the_remainder_to_early_stages() {
        let c = ChainLayout::even(80, 3).unwrap();
        assert_eq!(c.stages(), &[0..27, 27..54, 54..80]);
        assert_eq!(c.slots(), 27);
        assert_eq!(ChainLayout::even(4, 4).unwrap().slots(), 1);
        assert!(ChainLayout::even(4, 5).is_err());
    }
}
