//! Allocator policy of the `strata` process.
//!
//! quinn copies every received datagram into a fresh buffer (64 KB on loopback) and frees it
//! on another thread once the stream has been read. With glibc's default trim threshold
//! (128 KiB) the arenas return that memory to the kernel again and again, and every new buffer
//! page-faults it back in: in `strata bench transport` this cost up to 450,000 page faults and
//! 40% more CPU per GiB received, varying from run to run. Keeping up to
//! [`TRIM_THRESHOLD_BYTES`] of freed memory per arena removes both.

/// Freed memory an arena keeps before returning it to the kernel.
pub const TRIM_THRESHOLD_BYTES: usize = 64 << 20;

/// Applies the policy; call once, first thing in `main`. A no-op off glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before any other thread
    // exists. A failure (return 0) leaves glibc's defaults, which are correct, only slower.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES as libc::c_int);
    }
}
