//! The CUDA side of the kernels (feature `cuda`): the images built by
//! `build.rs`, the per-device module store, and one typed launcher per
//! CUDA kernel, next to the CPU kernel it is checked against
//! (`kernels/src/<family>.rs`).
//!
//! Every launcher
//! - takes the [`Target`] it launches on: the CUDA driver (a device's
//!   [`KernelStore`] and the stream, never the default stream) or, with the
//!   `cuda-sim` feature, the CPU layer ([`sim::SimDevice`], which runs the
//!   same `.cu` sources as C++ on the CPU), so the launch arithmetic below is
//!   exercised without a GPU too,
//! - passes its arguments in the order of the `extern "C"` signature (the
//!   CPU layer checks their number, kinds and sizes against the signature),
//! - checks shapes, lengths, alignment and limits in a pure function
//!   (`check_*`, no CUDA call, testable without a GPU) that returns the
//!   launch dimensions, grid sizes through `u32::try_from`,
//! - launches in an `unsafe` block with a `// SAFETY:` line, and maps a
//!   refused launch to [`KernelError::Launch`]; with the `sync-check`
//!   feature, or `LLAMA2_SYNC_CHECK=1` in the environment ([`sync_check`]),
//!   it also synchronizes, so faults surface at their kernel.
//!
//! Public items: [`Bf16`], [`DPtr`], [`Family`], [`KernelStore`], [`Target`],
//! [`KArg`], [`LaunchDims`], [`ENTRY_POINTS`], [`fatbin`], [`ptxas_report`],
//! [`keep_dir`], [`sync_check`]; the launcher modules [`elementwise`], [`rmsnorm`], [`rope`],
//! [`swiglu`], [`embedding`], [`cross_entropy`], [`adamw`], [`attention`];
//! with `cuda-sim`, [`sim`] (the CPU layer).

#![allow(clippy::too_many_arguments)]

pub mod adamw;
pub mod attention;
pub mod cross_entropy;
pub mod elementwise;
pub mod embedding;
pub mod report;
pub mod rmsnorm;
pub mod rope;
#[cfg(feature = "cuda-sim")]
pub mod sim;
pub mod swiglu;

use crate::{KernelError, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, LaunchConfig};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, OnceLock};

/// Element type marker of a bf16 device buffer (stored as u16 bit patterns).
#[derive(Clone, Copy, Debug)]
pub enum Bf16 {}

/// A typed device pointer with the number of elements it may access: what
/// a launcher receives for each buffer argument. The launcher checks `len`
/// against the shape and `addr` against the alignment the kernel needs.
pub struct DPtr<T> {
    pub addr: u64,
    pub len: usize,
    _t: PhantomData<T>,
}

impl<T> Clone for DPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for DPtr<T> {}
impl<T> std::fmt::Debug for DPtr<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DPtr({:#x}, {})", self.addr, self.len)
    }
}

/// Element types of device buffers, with their size in bytes.
pub trait Elem {
    const BYTES: usize;
}
impl Elem for Bf16 {
    const BYTES: usize = 2;
}
impl Elem for f32 {
    const BYTES: usize = 4;
}
impl Elem for f64 {
    const BYTES: usize = 8;
}
impl Elem for u32 {
    const BYTES: usize = 4;
}
impl Elem for i32 {
    const BYTES: usize = 4;
}

impl<T: Elem> DPtr<T> {
    /// A window of `len` elements at device address `addr`. Creating one is
    /// safe; launching a kernel on it is where the caller vouches for it.
    pub fn new(addr: u64, len: usize) -> Self {
        DPtr { addr, len, _t: PhantomData }
    }
    /// Elements `[off, off + len)` of this window, or `None` if outside.
    pub fn sub(self, off: usize, len: usize) -> Option<Self> {
        if off.checked_add(len)? > self.len {
            return None;
        }
        Some(DPtr::new(self.addr + (off * T::BYTES) as u64, len))
    }
}

/// One `.cu` file: the unit of compilation and of module loading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Elementwise,
    Rmsnorm,
    Rope,
    Swiglu,
    Embedding,
    CrossEntropy,
    Adamw,
    Attention,
    AttentionMma,
    AttentionV3,
}

impl Family {
    pub const ALL: [Family; 10] = [
        Family::Elementwise,
        Family::Rmsnorm,
        Family::Rope,
        Family::Swiglu,
        Family::Embedding,
        Family::CrossEntropy,
        Family::Adamw,
        Family::Attention,
        Family::AttentionMma,
        Family::AttentionV3,
    ];
    /// The file stem of the family's `.cu` source.
    pub fn name(self) -> &'static str {
        match self {
            Family::Elementwise => "elementwise",
            Family::Rmsnorm => "rmsnorm",
            Family::Rope => "rope",
            Family::Swiglu => "swiglu",
            Family::Embedding => "embedding",
            Family::CrossEntropy => "cross_entropy",
            Family::Adamw => "adamw",
            Family::Attention => "attention",
            Family::AttentionMma => "attention_mma",
            Family::AttentionV3 => "attention_v3",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

macro_rules! out_file {
    ($f:literal) => {
        include_bytes!(concat!(env!("OUT_DIR"), "/", $f, ".fatbin"))
    };
}
macro_rules! out_text {
    ($f:literal) => {
        include_str!(concat!(env!("OUT_DIR"), "/", $f, ".ptxas.txt"))
    };
}

/// The fatbin (sm_90a + sm_80 + compute_80 PTX) of a family, embedded.
pub fn fatbin(f: Family) -> &'static [u8] {
    match f {
        Family::Elementwise => out_file!("elementwise"),
        Family::Rmsnorm => out_file!("rmsnorm"),
        Family::Rope => out_file!("rope"),
        Family::Swiglu => out_file!("swiglu"),
        Family::Embedding => out_file!("embedding"),
        Family::CrossEntropy => out_file!("cross_entropy"),
        Family::Adamw => out_file!("adamw"),
        Family::Attention => out_file!("attention"),
        Family::AttentionMma => out_file!("attention_mma"),
        Family::AttentionV3 => out_file!("attention_v3"),
    }
}

/// The `ptxas -v` report of a family's build (registers, spills, smem).
pub fn ptxas_report(f: Family) -> &'static str {
    match f {
        Family::Elementwise => out_text!("elementwise"),
        Family::Rmsnorm => out_text!("rmsnorm"),
        Family::Rope => out_text!("rope"),
        Family::Swiglu => out_text!("swiglu"),
        Family::Embedding => out_text!("embedding"),
        Family::CrossEntropy => out_text!("cross_entropy"),
        Family::Adamw => out_text!("adamw"),
        Family::Attention => out_text!("attention"),
        Family::AttentionMma => out_text!("attention_mma"),
        Family::AttentionV3 => out_text!("attention_v3"),
    }
}

/// Where the build kept a family's cubins and PTX (for the image tests).
pub fn keep_dir(f: Family) -> std::path::PathBuf {
    std::path::Path::new(env!("OUT_DIR")).join("keep").join(f.name())
}

/// Every entry point the launchers name, with its family. The image test
/// checks each is an entry of the built sm_90a and sm_80 cubins.
pub const ENTRY_POINTS: &[(Family, &str)] = &[
    (Family::Elementwise, elementwise::CAST_F32_TO_BF16),
    (Family::Elementwise, elementwise::CAST_BF16_TO_F32),
    (Family::Elementwise, elementwise::ADD_FWD_BF16),
    (Family::Elementwise, elementwise::ADD_FWD_F32),
    (Family::Elementwise, elementwise::ADD_ASSIGN_BF16),
    (Family::Elementwise, elementwise::ADD_ASSIGN_F32),
    (Family::Elementwise, elementwise::SCALE_BF16),
    (Family::Elementwise, elementwise::SCALE_F32),
    (Family::Elementwise, elementwise::SUM_SQUARES_BF16),
    (Family::Elementwise, elementwise::SUM_SQUARES_F32),
    (Family::Elementwise, elementwise::GATHER_ROWS_BF16),
    (Family::Elementwise, elementwise::GATHER_ROWS_F32),
    (Family::Elementwise, elementwise::SCATTER_ADD_ROWS_BF16),
    (Family::Elementwise, elementwise::SCATTER_ADD_ROWS_F32),
    (Family::Elementwise, elementwise::KV_WRITE_BF16),
    (Family::Elementwise, elementwise::KV_WRITE_F32),
    (Family::Elementwise, elementwise::KV_WRITE_RAGGED_BF16),
    (Family::Elementwise, elementwise::KV_WRITE_RAGGED_F32),
    (Family::Rmsnorm, rmsnorm::FWD),
    (Family::Rmsnorm, rmsnorm::BWD),
    (Family::Rmsnorm, rmsnorm::BWD_DWEIGHT),
    (Family::Rmsnorm, rmsnorm::ADD_FWD),
    (Family::Rope, rope::FWD),
    (Family::Rope, rope::BWD),
    (Family::Rope, rope::FWD_RAGGED),
    (Family::Rope, rope::BWD_RAGGED),
    (Family::Rope, rope::QKV_SPLIT),
    (Family::Rope, rope::QKV_SPLIT_RAGGED),
    (Family::Rope, rope::QKV_PACK_BWD),
    (Family::Rope, rope::QKV_PACK_BWD_RAGGED),
    (Family::Swiglu, swiglu::FWD),
    (Family::Swiglu, swiglu::BWD),
    (Family::Swiglu, swiglu::SPLIT_FWD),
    (Family::Swiglu, swiglu::BWD_PACK),
    (Family::Embedding, embedding::FWD),
    (Family::Embedding, embedding::BWD),
    (Family::CrossEntropy, cross_entropy::FWD_BWD),
    (Family::CrossEntropy, cross_entropy::FWD_BWD_ENT),
    (Family::Adamw, adamw::STEP),
    (Family::Attention, attention::FWD_D64),
    (Family::Attention, attention::FWD_D128),
    (Family::AttentionMma, attention::FWD_MMA_D64),
    (Family::AttentionMma, attention::FWD_MMA_D128),
    (Family::AttentionMma, attention::BWD_DQ_MMA_D64),
    (Family::AttentionMma, attention::BWD_DQ_MMA_D128),
    (Family::AttentionMma, attention::BWD_DKDV_MMA_D64),
    (Family::AttentionMma, attention::BWD_DKDV_MMA_D128),
    (Family::Attention, attention::BWD_PRE_D64),
    (Family::Attention, attention::BWD_PRE_D128),
    (Family::Attention, attention::BWD_DQ_D64),
    (Family::Attention, attention::BWD_DQ_D128),
    (Family::Attention, attention::BWD_DKDV_D64),
    (Family::Attention, attention::BWD_DKDV_D128),
    (Family::Attention, attention::FWD_RAGGED_D64),
    (Family::Attention, attention::FWD_RAGGED_D128),
    (Family::Attention, attention::BWD_PRE_RAGGED_D64),
    (Family::Attention, attention::BWD_PRE_RAGGED_D128),
    (Family::Attention, attention::BWD_DQ_RAGGED_D64),
    (Family::Attention, attention::BWD_DQ_RAGGED_D128),
    (Family::Attention, attention::BWD_DKDV_RAGGED_D64),
    (Family::Attention, attention::BWD_DKDV_RAGGED_D128),
    (Family::Attention, attention::FWD_SPLITK_D64),
    (Family::Attention, attention::FWD_SPLITK_D128),
    (Family::Attention, attention::FWD_SPLITK_RAGGED_D64),
    (Family::Attention, attention::FWD_SPLITK_RAGGED_D128),
    (Family::Attention, attention::SPLITK_COMBINE_D64),
    (Family::Attention, attention::SPLITK_COMBINE_D128),
    (Family::Attention, attention::SPLITK_COMBINE_RAGGED_D64),
    (Family::Attention, attention::SPLITK_COMBINE_RAGGED_D128),
    (Family::AttentionV3, attention::FWD_V3_D64),
    (Family::AttentionV3, attention::FWD_V3_D128),
    (Family::AttentionV3, attention::FWD_V3_RAGGED_D64),
    (Family::AttentionV3, attention::FWD_V3_RAGGED_D128),
    (Family::AttentionV3, attention::BWD_V3_D64),
    (Family::AttentionV3, attention::BWD_V3_D128),
    (Family::AttentionV3, attention::BWD_V3_RAGGED_D64),
    (Family::AttentionV3, attention::BWD_V3_RAGGED_D128),
    (Family::AttentionV3, attention::BWD_V3_DQ),
];

/// The modules of one device, each loaded on first use, and the functions
/// looked up in them, cached by name (candle's `ModuleStore`).
pub struct KernelStore {
    ctx: Arc<CudaContext>,
    modules: [OnceLock<Arc<CudaModule>>; 10],
    funcs: Mutex<HashMap<&'static str, CudaFunction>>,
}

impl KernelStore {
    pub fn new(ctx: Arc<CudaContext>) -> Self {
        KernelStore { ctx, modules: Default::default(), funcs: Mutex::new(HashMap::new()) }
    }

    /// Loads every family now (so a bad image fails at start, not mid-run).
    pub fn load_all(&self) -> Result<()> {
        for f in Family::ALL {
            self.module(f)?;
        }
        Ok(())
    }

    fn module(&self, f: Family) -> Result<Arc<CudaModule>> {
        let cell = &self.modules[f.index()];
        if let Some(m) = cell.get() {
            return Ok(m.clone());
        }
        // The image is copied into a Vec, whose heap allocation is 16-byte
        // aligned (glibc malloc), as cuModuleLoadData wants for a fatbin.
        let image = cudarc::nvrtc::Ptx::from_binary(fatbin(f).to_vec());
        let m = self.ctx.load_module(image).map_err(|e| KernelError::Cuda {
            what: format!("loading the `{}` module", f.name()),
            msg: format!("{e}; HINT: the driver must support CUDA 13.0 (R580 or later)"),
        })?;
        Ok(cell.get_or_init(|| m).clone())
    }

    /// The function `name` of family `f` (looked up once).
    pub fn func(&self, f: Family, name: &'static str) -> Result<CudaFunction> {
        if let Some(func) = self.funcs.lock().map_err(|_| poisoned())?.get(name) {
            return Ok(func.clone());
        }
        let func = self.module(f)?.load_function(name).map_err(|e| KernelError::Cuda { what: format!("looking up kernel `{name}`"), msg: e.to_string() })?;
        self.funcs.lock().map_err(|_| poisoned())?.insert(name, func.clone());
        Ok(func)
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
}

fn poisoned() -> KernelError {
    KernelError::Cuda { what: "kernel cache".into(), msg: "a thread panicked while holding its lock".into() }
}

/// Grid, block and dynamic shared memory of one launch, as the pure
/// `check_*` functions compute them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchDims {
    pub grid: (u32, u32, u32),
    pub block: u32,
    pub smem: u32,
}

impl LaunchDims {
    pub fn cfg(&self) -> LaunchConfig {
        LaunchConfig { grid_dim: self.grid, block_dim: (self.block, 1, 1), shared_mem_bytes: self.smem }
    }
}

/// `u32::try_from` with an error naming the kernel and the quantity.
pub(crate) fn to_u32(op: &'static str, what: &str, x: usize) -> Result<u32> {
    u32::try_from(x).map_err(|_| KernelError::Arg { op, msg: format!("{what} = {x} does not fit in u32") })
}

/// `i32::try_from` for the `int` arguments of the kernels.
pub(crate) fn to_i32(op: &'static str, what: &str, x: usize) -> Result<i32> {
    i32::try_from(x).map_err(|_| KernelError::Arg { op, msg: format!("{what} = {x} exceeds the kernel's int range") })
}

/// `i64::try_from` for the `int64_t` arguments of the kernels.
pub(crate) fn to_i64(op: &'static str, what: &str, x: usize) -> Result<i64> {
    i64::try_from(x).map_err(|_| KernelError::Arg { op, msg: format!("{what} = {x} exceeds int64") })
}

/// Checks that `p` holds at least `need` elements.
pub(crate) fn check_ptr<T>(op: &'static str, buf: &'static str, p: DPtr<T>, need: usize) -> Result<()> {
    crate::check_min_len(op, buf, p.len, need)
}

/// Checks that `p` is `align`-byte aligned.
pub(crate) fn check_align<T>(op: &'static str, buf: &'static str, p: DPtr<T>, align: u64) -> Result<()> {
    if !p.addr.is_multiple_of(align) {
        return Err(KernelError::Align { op, buf, addr: p.addr, need: align });
    }
    Ok(())
}

/// Blocks for a grid-stride loop over `work` items at `per_block` items per
/// block, capped at `max_blocks` (any count is correct; the cap bounds the
/// launch for huge tensors). At least 1.
pub(crate) fn stride_blocks(op: &'static str, work: usize, per_block: usize, max_blocks: usize) -> Result<u32> {
    to_u32(op, "grid", work.div_ceil(per_block).clamp(1, max_blocks))
}

/// Where a launcher runs its kernel.
#[derive(Clone, Copy)]
pub enum Target<'a> {
    /// the CUDA driver: the kernels of a device, and the stream to launch on
    Cuda { ks: &'a KernelStore, stream: &'a CudaStream },
    /// the CPU layer: the same `.cu` sources compiled as C++ (feature `cuda-sim`)
    #[cfg(feature = "cuda-sim")]
    Sim(&'a sim::SimDevice),
}

/// One kernel argument as a launcher passes it: device pointers are `u64`
/// addresses, `int` is `i32`, `int64_t` is `i64`, `float` is `f32`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KArg {
    Ptr(u64),
    I32(i32),
    I64(i64),
    F32(f32),
}
impl From<u64> for KArg {
    fn from(x: u64) -> Self {
        KArg::Ptr(x)
    }
}
impl From<i32> for KArg {
    fn from(x: i32) -> Self {
        KArg::I32(x)
    }
}
impl From<i64> for KArg {
    fn from(x: i64) -> Self {
        KArg::I64(x)
    }
}
impl From<f32> for KArg {
    fn from(x: f32) -> Self {
        KArg::F32(x)
    }
}

/// Dynamic shared memory a launch may use without raising the kernel's
/// limit (48 KiB); a launch that asks for more opts in first
/// (`CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`; the CPU layer checks
/// it against the sm_90 maximum of 227 KiB).
pub const SMEM_NO_OPTIN: u32 = 48 * 1024;

impl Target<'_> {
    /// Launches `kernel` of `family` with `dims` and `args` and checks the
    /// launch error (on the CPU layer the launch also runs to completion).
    ///
    /// # Safety
    /// Every pointer argument must cover what the kernel accesses for these
    /// dimensions and scalar arguments (the launchers' `check_*` functions
    /// establish it; each call site says why in a `// SAFETY:` line).
    pub(crate) unsafe fn launch(self, family: Family, kernel: &'static str, dims: LaunchDims, args: &[KArg]) -> Result<()> {
        match self {
            Target::Cuda { ks, stream } => {
                use cudarc::driver::PushKernelArg as _;
                let func = ks.func(family, kernel)?;
                if dims.smem > SMEM_NO_OPTIN {
                    use cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES as MAX_DYN;
                    let bytes = i32::try_from(dims.smem).map_err(|_| KernelError::Arg { op: kernel, msg: format!("{} bytes of shared memory", dims.smem) })?;
                    func.set_attribute(MAX_DYN, bytes).map_err(|e| KernelError::Launch {
                        kernel,
                        grid: dims.grid,
                        block: dims.block,
                        smem: dims.smem,
                        msg: format!(
                            "raising the dynamic shared memory limit to {bytes} bytes: {e}; HINT: the GPU must allow that much per block (sm_80 and later)"
                        ),
                    })?;
                }
                let mut b = stream.launch_builder(&func);
                for a in args {
                    match a {
                        KArg::Ptr(x) => b.arg(x),
                        KArg::I32(x) => b.arg(x),
                        KArg::I64(x) => b.arg(x),
                        KArg::F32(x) => b.arg(x),
                    };
                }
                // SAFETY: the caller's contract (above)
                let res = unsafe { b.launch(dims.cfg()) }.map(|_| ());
                finish_launch(stream, kernel, dims, res)
            }
            #[cfg(feature = "cuda-sim")]
            // SAFETY: the caller's contract (above)
            Target::Sim(dev) => unsafe { dev.launch_family(family, kernel, dims, args) },
        }
    }
}

/// Launches `$kernel` of `$family` on the [`Target`] `$t` with the arguments
/// `$arg` (local variables, in the order of the `extern "C"` signature).
/// Expands to an unsafe call: the caller writes `unsafe { launch!(...) }`
/// with a `// SAFETY:` line saying why the pointers cover what the kernel
/// accesses for these dimensions.
macro_rules! launch {
    ($t:expr, $family:expr, $kernel:expr, $dims:expr, [$($arg:ident),* $(,)?]) => {{
        let args = [$($crate::cuda::KArg::from($arg)),*];
        $t.launch($family, $kernel, $dims, &args)
    }};
}
pub(crate) use launch;

/// Whether every launch is followed by a synchronize, so an asynchronous
/// fault is reported at the kernel that caused it: the `sync-check` feature,
/// or `LLAMA2_SYNC_CHECK` set to anything but empty or `0` (read once; lets
/// one release binary run gpu-check's correctness part this way and its
/// timings without).
pub fn sync_check() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    cfg!(feature = "sync-check") || *ON.get_or_init(|| std::env::var("LLAMA2_SYNC_CHECK").is_ok_and(|v| !v.is_empty() && v != "0"))
}

/// Maps a refused launch to [`KernelError::Launch`]; under [`sync_check`],
/// waits for the kernel so that a fault is reported at it.
pub(crate) fn finish_launch(
    stream: &CudaStream,
    kernel: &'static str,
    dims: LaunchDims,
    res: std::result::Result<(), cudarc::driver::DriverError>,
) -> Result<()> {
    let err = |msg: String| KernelError::Launch { kernel, grid: dims.grid, block: dims.block, smem: dims.smem, msg };
    res.map_err(|e| err(e.to_string()))?;
    if sync_check() {
        stream.synchronize().map_err(|e| err(format!("after the launch: {e}")))?;
    }
    Ok(())
}
