//! The thin layer over the CUDA driver: finding the GPU and its libraries without panicking,
//! raw device and pinned host buffers, streams and events. Every call's result is checked and
//! becomes an [`ExecError`] naming what failed.
//!
//! cudarc's safe slices record events on every use once a second stream exists; the executor
//! orders its streams itself with per-layer events, so it works with raw pointers here.

use super::DeviceInfo;
use crate::exec::ExecError;
use cudarc::driver::{CudaContext, result, sys};
use std::ffi::c_void;
use std::sync::Arc;

/// A failed driver call, with what was being done.
pub(crate) fn dev(what: &str, e: impl std::fmt::Display) -> ExecError {
    ExecError::Device(format!("{what}: {e}"))
}

/// Checks that the CUDA driver, cuBLAS and NVRTC libraries can be loaded. cudarc's dynamic
/// loading panics on first use of a missing library, so this runs before anything else.
pub(crate) fn libraries() -> Result<(), ExecError> {
    // SAFETY: these only try to open the shared libraries.
    let present = unsafe {
        [
            ("the CUDA driver (libcuda.so)", sys::is_culib_present()),
            (
                "cuBLAS (libcublas.so)",
                cudarc::cublas::sys::is_culib_present(),
            ),
            (
                "NVRTC (libnvrtc.so)",
                cudarc::nvrtc::sys::is_culib_present(),
            ),
        ]
    };
    let missing: Vec<&str> = present
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(name, _)| *name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ExecError::Device(format!(
            "no usable GPU: cannot load {} (install the NVIDIA driver and CUDA 13 libraries, \
             or pick another executor)",
            missing.join(", ")
        )))
    }
}

/// Opens GPU `ordinal` (its primary context) and describes it.
pub(crate) fn open(ordinal: usize) -> Result<(Arc<CudaContext>, DeviceInfo), ExecError> {
    libraries()?;
    let count = CudaContext::device_count().map_err(|e| {
        ExecError::Device(format!(
            "no usable GPU: the CUDA driver does not start: {e}"
        ))
    })?;
    if ordinal >= count.max(0) as usize {
        return Err(ExecError::Device(format!(
            "no usable GPU: asked for GPU {ordinal}, the driver sees {count}"
        )));
    }
    let ctx = CudaContext::new(ordinal).map_err(|e| dev("opening the GPU", e))?;
    let name = ctx.name().map_err(|e| dev("reading the GPU's name", e))?;
    let cc = ctx
        .compute_capability()
        .map_err(|e| dev("reading the compute capability", e))?;
    let (free, total) = ctx
        .mem_get_info()
        .map_err(|e| dev("reading device memory", e))?;
    Ok((
        ctx,
        DeviceInfo {
            ordinal,
            name,
            compute_capability: cc,
            total_bytes: total as u64,
            free_bytes: free as u64,
        },
    ))
}

/// Device memory, freed on drop (the owner keeps its context current).
#[derive(Debug)]
pub(crate) struct DeviceBuf {
    ptr: sys::CUdeviceptr,
    bytes: usize,
}

impl DeviceBuf {
    pub(crate) fn new(bytes: usize, what: &str) -> Result<DeviceBuf, ExecError> {
        // SAFETY: a plain allocation; zero bytes is allocated as one byte so the pointer is valid.
        let ptr = unsafe { result::malloc_sync(bytes.max(1)) }.map_err(|e| {
            dev(
                &format!("allocating {what} ({:.1} MiB)", bytes as f64 / 1048576.0),
                e,
            )
        })?;
        Ok(DeviceBuf { ptr, bytes })
    }

    pub(crate) fn ptr(&self) -> u64 {
        self.ptr
    }

    /// The address `offset` bytes in.
    pub(crate) fn at(&self, offset: usize) -> u64 {
        debug_assert!(offset <= self.bytes);
        self.ptr + offset as u64
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Copies `src` to the start of the buffer and waits until the data is on the device.
    ///
    /// A synchronous copy from pageable memory may return once `src` is staged for DMA, before
    /// the device holds it; and the executor's streams do not synchronize with the legacy
    /// stream that copy runs on. So the legacy stream is synchronized too: a kernel launched
    /// after `upload` returns reads the new bytes.
    pub(crate) fn upload<T: Copy>(&self, src: &[T], what: &str) -> Result<(), ExecError> {
        let n = std::mem::size_of_val(src);
        assert!(n <= self.bytes, "upload of {n} bytes into {}", self.bytes);
        // SAFETY: `src` is `n` readable bytes; the buffer holds at least `n`. The null stream
        // is the legacy default stream the copy ran on.
        unsafe {
            sys::cuMemcpyHtoD_v2(self.ptr, src.as_ptr() as *const c_void, n)
                .result()
                .and_then(|()| sys::cuStreamSynchronize(std::ptr::null_mut()).result())
        }
        .map_err(|e| dev(&format!("uploading {what}"), e))
    }

    /// Copies the first `dst.len()` elements of the buffer to `dst` and waits.
    pub(crate) fn download<T: Copy>(&self, dst: &mut [T], what: &str) -> Result<(), ExecError> {
        let n = std::mem::size_of_val(dst);
        assert!(n <= self.bytes, "download of {n} bytes from {}", self.bytes);
        // SAFETY: `dst` is `n` writable bytes; the buffer holds at least `n`.
        unsafe { sys::cuMemcpyDtoH_v2(dst.as_mut_ptr() as *mut c_void, self.ptr, n) }
            .result()
            .map_err(|e| dev(&format!("downloading {what}"), e))
    }

    /// Fills every byte with `byte` and waits (tests poison outputs with it).
    pub(crate) fn fill_bytes(&self, byte: u8) -> Result<(), ExecError> {
        // SAFETY: the whole buffer is ours.
        unsafe { result::memset_d8_sync(self.ptr, byte, self.bytes) }
            .map_err(|e| dev("filling device memory", e))
    }
}

impl Drop for DeviceBuf {
    fn drop(&mut self) {
        // SAFETY: allocated by malloc_sync and freed once. A failure here cannot be reported.
        let _ = unsafe { result::free_sync(self.ptr) };
    }
}

/// Page-locked host memory the CPU reads at full speed (not write-combined) and the GPU's copy
/// engines move at full speed; mapped into the device's address space.
#[derive(Debug)]
pub(crate) struct PinnedBuf {
    ptr: *mut u8,
    bytes: usize,
}

// SAFETY: a plain allocation owned by one executor; access is ordered by its streams.
unsafe impl Send for PinnedBuf {}

impl PinnedBuf {
    pub(crate) fn new(bytes: usize, what: &str) -> Result<PinnedBuf, ExecError> {
        // SAFETY: a plain allocation. DEVICEMAP (not WRITECOMBINED): the CPU reads it too.
        let ptr = unsafe { result::malloc_host(bytes.max(1), sys::CU_MEMHOSTALLOC_DEVICEMAP) }
            .map_err(|e| {
                dev(
                    &format!(
                        "pinning {what} ({:.1} GiB of host memory)",
                        bytes as f64 / (1u64 << 30) as f64
                    ),
                    e,
                )
            })?;
        Ok(PinnedBuf {
            ptr: ptr as *mut u8,
            bytes,
        })
    }

    pub(crate) fn addr(&self) -> u64 {
        self.ptr as u64
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn as_mut_slice<T: Copy>(&mut self) -> &mut [T] {
        let n = self.bytes / std::mem::size_of::<T>();
        // SAFETY: `bytes` valid bytes, page-aligned, exclusively borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr as *mut T, n) }
    }
}

impl Drop for PinnedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated by malloc_host and freed once.
        let _ = unsafe { result::free_host(self.ptr as *mut c_void) };
    }
}

/// A stream that does not synchronize with the legacy default stream.
#[derive(Debug)]
pub(crate) struct Stream(pub(crate) sys::CUstream);

// SAFETY: a CUstream may be used from any thread with the context current.
unsafe impl Send for Stream {}

impl Stream {
    pub(crate) fn new() -> Result<Stream, ExecError> {
        result::stream::create(result::stream::StreamKind::NonBlocking)
            .map(Stream)
            .map_err(|e| dev("creating a stream", e))
    }

    pub(crate) fn sync(&self, what: &str) -> Result<(), ExecError> {
        // SAFETY: a live stream.
        unsafe { result::stream::synchronize(self.0) }.map_err(|e| dev(what, e))
    }

    /// Makes later work on this stream wait for `event`'s last record.
    pub(crate) fn wait(&self, event: &Event) -> Result<(), ExecError> {
        // SAFETY: live stream and event.
        unsafe {
            result::stream::wait_event(
                self.0,
                event.0,
                sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
            )
        }
        .map_err(|e| dev("ordering streams", e))
    }

    /// Copies `bytes` between any two addresses (device, pinned host) on this stream.
    pub(crate) fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<(), ExecError> {
        // SAFETY: the caller passes addresses of live buffers holding `bytes`.
        unsafe { sys::cuMemcpyAsync(dst, src, bytes, self.0) }
            .result()
            .map_err(|e| dev("copying KV blocks", e))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // SAFETY: created by stream::create, destroyed once.
        let _ = unsafe { result::stream::destroy(self.0) };
    }
}

/// An event; `timing` ones can measure elapsed time between two records.
#[derive(Debug)]
pub(crate) struct Event(pub(crate) sys::CUevent);

// SAFETY: as for streams.
unsafe impl Send for Event {}

impl Event {
    pub(crate) fn new(timing: bool) -> Result<Event, ExecError> {
        let flags = if timing {
            sys::CUevent_flags::CU_EVENT_DEFAULT
        } else {
            sys::CUevent_flags::CU_EVENT_DISABLE_TIMING
        };
        result::event::create(flags)
            .map(Event)
            .map_err(|e| dev("creating an event", e))
    }

    pub(crate) fn record(&self, stream: &Stream) -> Result<(), ExecError> {
        // SAFETY: live event and stream.
        unsafe { result::event::record(self.0, stream.0) }.map_err(|e| dev("recording an event", e))
    }

    pub(crate) fn sync(&self) -> Result<(), ExecError> {
        // SAFETY: a live event.
        unsafe { result::event::synchronize(self.0) }.map_err(|e| dev("waiting for the GPU", e))
    }

    /// Whether the work before the event's last record has completed (without waiting).
    pub(crate) fn done(&self) -> Result<bool, ExecError> {
        // SAFETY: a live event.
        match unsafe { sys::cuEventQuery(self.0) } {
            sys::CUresult::CUDA_SUCCESS => Ok(true),
            sys::CUresult::CUDA_ERROR_NOT_READY => Ok(false),
            e => Err(dev("querying an event", format!("{e:?}"))),
        }
    }

    /// Milliseconds from `start` to this event (both recorded with timing).
    pub(crate) fn since(&self, start: &Event) -> Result<f32, ExecError> {
        // SAFETY: live events.
        unsafe { result::event::elapsed(start.0, self.0) }.map_err(|e| dev("reading a timer", e))
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: created by event::create, destroyed once.
        let _ = unsafe { result::event::destroy(self.0) };
    }
}
