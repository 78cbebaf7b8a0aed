//! Matrix products through cuBLASLt: bf16 operands, fp32 accumulation
//! (`CUBLAS_COMPUTE_32F`), the result stored as bf16 (activations) or f32
//! (parameter gradients, accumulated with beta = 1).
//!
//! Row-major `C (m, n) = op(A) (m, k) · op(B) (k, n)` is computed as the
//! column-major product `Cᵀ (n, m) = op(B)ᵀ · op(A)ᵀ`: cuBLASLt's A is our B
//! and its B is our A, each with its own transpose flag, and every stored
//! matrix keeps its leading dimension (its row length).
//!
//! Each distinct problem (shape, flags, output type, pointer alignment) asks
//! the heuristic once; its choice is cached. The alignment of each pointer
//! is passed as a preference, so a window that starts off a 256-byte
//! boundary gets an algorithm that accepts it.
//!
//! Public items: [`Blas`], [`OutType`].

use crate::error::{Result, RtError};
use cudarc::cublaslt::{result as lt, sys};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use llama2_kernels::{GradWrite, Trans};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Mutex;

/// Element type of the product's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutType {
    Bf16,
    F32,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    out: OutType,
    accumulate: bool,
    align: [u32; 3],
}

/// A cuBLASLt handle, its workspace and the heuristic cache.
pub struct Blas {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    ws_bytes: usize,
    algos: Mutex<HashMap<Key, sys::cublasLtMatmulAlgo_t>>,
}

// SAFETY: the handle is used only under `&self` methods that enqueue on the
// backend's one stream; cuBLASLt handles may be used from any thread.
unsafe impl Send for Blas {}
unsafe impl Sync for Blas {}

impl Drop for Blas {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once here.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

#[track_caller]
fn lt_err(what: &str, e: impl std::fmt::Debug) -> RtError {
    let l = std::panic::Location::caller();
    RtError::Cuda { what: format!("cuBLASLt {what}"), location: format!("{}:{}", l.file(), l.line()), msg: format!("{e:?}") }
}

/// Largest power of two (<= 256) dividing `addr`.
fn alignment(addr: u64) -> u32 {
    if addr == 0 {
        return 256;
    }
    (1u64 << addr.trailing_zeros().min(8)) as u32
}

/// Descriptors freed on drop.
struct Layout(sys::cublasLtMatrixLayout_t);
impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created by create_matrix_layout, freed once.
        let _ = unsafe { lt::destroy_matrix_layout(self.0) };
    }
}
struct Desc(sys::cublasLtMatmulDesc_t);
impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created by create_matmul_desc, freed once.
        let _ = unsafe { lt::destroy_matmul_desc(self.0) };
    }
}
struct Pref(sys::cublasLtMatmulPreference_t);
impl Drop for Pref {
    fn drop(&mut self) {
        // SAFETY: created by create_matmul_pref, freed once.
        let _ = unsafe { lt::destroy_matmul_pref(self.0) };
    }
}

impl Blas {
    /// A handle and a 32 MiB workspace (NVIDIA's recommendation for Hopper).
    pub fn new(stream: &std::sync::Arc<CudaStream>) -> Result<Self> {
        // SAFETY: only asks the dynamic loader whether the library exists.
        if !unsafe { sys::is_culib_present() } {
            return Err(RtError::NoDevice(
                "libcublasLt.so (CUDA 13) not found; HINT: install the CUDA 13 cuBLAS libraries or add their directory to LD_LIBRARY_PATH".into(),
            ));
        }
        let handle = lt::create_handle().map_err(|e| lt_err("create handle", e))?;
        let ws_bytes = 32 << 20;
        let workspace = stream.alloc_zeros::<u8>(ws_bytes).map_err(|e| lt_err("workspace", e))?;
        Ok(Blas { handle, workspace, ws_bytes, algos: Mutex::new(HashMap::new()) })
    }

    /// `C (m, n) (=|+=) op(A) · op(B)` with A, B bf16 at device addresses
    /// `a`, `b` and C at `c` (bf16 or f32 per `out`). The caller has checked
    /// that the buffers hold `m*k`, `k*n`, `m*n` elements.
    ///
    /// # Safety
    /// `a`, `b`, `c` must be live device allocations of at least those sizes.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn matmul(
        &self,
        stream: &CudaStream,
        c: u64,
        out: OutType,
        a: u64,
        b: u64,
        m: usize,
        n: usize,
        k: usize,
        ta: Trans,
        tb: Trans,
        write: GradWrite,
    ) -> Result<()> {
        // cuBLASLt runs on the calling thread's current context (our launches
        // bind it themselves; this call must too, whatever thread it is on)
        stream.context().bind_to_thread().map_err(|e| lt_err("binding the context", e))?;
        let accumulate = write == GradWrite::Accumulate;
        let key = Key { m, n, k, ta: ta == Trans::T, tb: tb == Trans::T, out, accumulate, align: [alignment(a), alignment(b), alignment(c)] };
        let out_ty = match out {
            OutType::Bf16 => sys::cudaDataType_t::CUDA_R_16BF,
            OutType::F32 => sys::cudaDataType_t::CUDA_R_32F,
        };
        let bf = sys::cudaDataType_t::CUDA_R_16BF;
        // column-major view: A' = our B (n x k after op), B' = our A (k x m after op)
        let (a_rows, a_cols, lda) = if tb == Trans::N { (n, k, n) } else { (k, n, k) };
        let (b_rows, b_cols, ldb) = if ta == Trans::N { (k, m, k) } else { (m, k, m) };
        let la = Layout(lt::create_matrix_layout(bf, a_rows as u64, a_cols as u64, lda as i64).map_err(|e| lt_err("layout", e))?);
        let lb = Layout(lt::create_matrix_layout(bf, b_rows as u64, b_cols as u64, ldb as i64).map_err(|e| lt_err("layout", e))?);
        let lc = Layout(lt::create_matrix_layout(out_ty, n as u64, m as u64, n as i64).map_err(|e| lt_err("layout", e))?);
        let desc =
            Desc(lt::create_matmul_desc(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, sys::cudaDataType_t::CUDA_R_32F).map_err(|e| lt_err("matmul desc", e))?);
        let op = |t: Trans| -> i32 {
            match t {
                Trans::N => 0, // CUBLAS_OP_N
                Trans::T => 1, // CUBLAS_OP_T
            }
        };
        for (attr, t) in [
            (sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA, op(tb)),
            (sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB, op(ta)),
        ] {
            lt::set_matmul_desc_attribute(desc.0, attr, (&t) as *const i32 as *const c_void, std::mem::size_of::<i32>()).map_err(|e| lt_err("transpose", e))?;
        }
        let algo = {
            let cached = self.algos.lock().map_err(|_| lt_err("cache", "poisoned"))?.get(&key).copied();
            match cached {
                Some(a) => a,
                None => {
                    let pref = Pref(lt::create_matmul_pref().map_err(|e| lt_err("preference", e))?);
                    let ws = self.ws_bytes;
                    lt::set_matmul_pref_attribute(
                        pref.0,
                        sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                        (&ws) as *const usize as *const c_void,
                        std::mem::size_of::<usize>(),
                    )
                    .map_err(|e| lt_err("workspace preference", e))?;
                    // our A is cuBLASLt's B and vice versa
                    for (attr, al) in [
                        (sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align[1]),
                        (sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align[0]),
                        (sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align[2]),
                        (sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align[2]),
                    ] {
                        lt::set_matmul_pref_attribute(pref.0, attr, (&al) as *const u32 as *const c_void, std::mem::size_of::<u32>())
                            .map_err(|e| lt_err("alignment preference", e))?;
                    }
                    let h = lt::get_matmul_algo_heuristic(self.handle, desc.0, la.0, lb.0, lc.0, lc.0, pref.0)
                        .map_err(|e| lt_err(&format!("heuristic for m {m} n {n} k {k} {ta:?}{tb:?} -> {out:?}"), e))?;
                    self.algos.lock().map_err(|_| lt_err("cache", "poisoned"))?.insert(key, h.algo);
                    h.algo
                }
            }
        };
        let alpha = 1f32;
        let beta = if accumulate { 1f32 } else { 0f32 };
        let (ws, _rec) = self.workspace.device_ptr(stream);
        lt::matmul(
            self.handle,
            desc.0,
            (&alpha) as *const f32 as *const c_void,
            (&beta) as *const f32 as *const c_void,
            b as *const c_void,
            la.0,
            a as *const c_void,
            lb.0,
            c as *const c_void,
            lc.0,
            c as *mut c_void,
            lc.0,
            &algo,
            ws as *mut c_void,
            self.ws_bytes,
            stream.cu_stream() as sys::cudaStream_t,
        )
        .map_err(|e| lt_err(&format!("matmul m {m} n {n} k {k} {ta:?}{tb:?} -> {out:?}"), e))?;
        if llama2_kernels::cuda::sync_check() {
            stream.synchronize().map_err(|e| lt_err(&format!("after matmul m {m} n {n} k {k} {ta:?}{tb:?} -> {out:?}"), e))?;
        }
        Ok(())
    }
}
