//! Which layers of a prefill stay on the GPU.
//!
//! Offloaded layers are spread evenly through the model so that each one's transfer to the host
//! overlaps the compute of the resident layers after it, instead of bunching at the end.

/// `offload` layers out of `layers`, evenly spread; returns a mask, `true` = offloaded.
pub fn spread(layers: usize, offload: usize) -> Vec<bool> {
    let offload = offload.min(layers);
    let mut mask = vec![false; layers];
    for i in 0..offload {
        // Centres of `offload` equal slices of the layer range.
        let l = ((2 * i + 1) * layers) / (2 * offload);
        mask[l.min(layers - 1)] = true;
    }
    debug_assert_eq!(mask.iter().filter(|&&m| m).count(), offload);
    mask
}

/// The fewest layers that must stay resident so that offloading the others takes no longer
/// than the prefill's compute: `offloaded · transfer_s_per_layer ≤ prefill_s`.
pub fn min_resident(layers: usize, transfer_s_per_layer: f64, prefill_s: f64) -> usize {
    if transfer_s_per_layer <= 0.0 {
        return 0;
    }
    let max_off = (prefill_s / transfer_s_per_layer).floor();
    let max_off = if max_off.is_finite() {
        max_off as usize
    } else {
        layers
    };
    layers.saturating_sub(max_off.min(layers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_even_and_exact() {
        assert_eq!(spread(4, 0), vec![false; 4]);
        assert_eq!(spread(4, 4), vec![true; 4]);
        assert_eq!(spread(4, 2), vec![false, true, false, true]);
        for layers in 1..40 {
            for off in 0..=layers {
                let m = spread(layers, off);
                assert_eq!(m.iter().filter(|&&x| x).count(), off, "{layers} {off}");
            }
        }
    }

    #[test]
    fn offload_bounded_by_compute() {
        assert_eq!(min_resident(32, 0.0, 1.0), 0);
        assert_eq!(min_resident(32, 0.1, 1.0), 22);
        assert_eq!(min_resident(32, 1.0, 100.0), 0);
        assert_eq!(min_resident(32, 10.0, 1.0), 32);
    }
}
