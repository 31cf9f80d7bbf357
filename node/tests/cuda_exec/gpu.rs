//! The guard every test starts with: without a usable GPU a test says why and passes, unless
//! [`REQUIRE_GPU`] is set (on the GPU machine, so that a broken driver cannot pass unseen).

use strata_node::exec::cuda::probe;

/// Set (to anything) to make a missing GPU fail the tests instead of skipping them.
pub const REQUIRE_GPU: &str = "STRATA_REQUIRE_GPU";

/// Whether GPU 0 is usable. Prints the device, or the skip line with `probe`'s error.
pub fn gpu() -> bool {
    let test = std::thread::current()
        .name()
        .unwrap_or("cuda_exec")
        .to_string();
    match probe(0) {
        Ok(info) => {
            eprintln!(
                "{test}: running on GPU {} {} (sm_{}{}, {} MiB free)",
                info.ordinal,
                info.name,
                info.compute_capability.0,
                info.compute_capability.1,
                info.free_bytes >> 20
            );
            true
        }
        Err(e) if std::env::var_os(REQUIRE_GPU).is_some() => {
            panic!("{test}: {REQUIRE_GPU} is set but there is no usable GPU: {e}")
        }
        Err(e) => {
            eprintln!("skipping {test}: no usable GPU: {e}");
            false
        }
    }
}
