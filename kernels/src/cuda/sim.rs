//! The CPU layer (feature `cuda-sim`): the kernels' own `.cu` sources,
//! compiled as C++ against `kernels/sim/include/cuda_sim.h` by `build.rs`,
//! run on the CPU by `kernels/sim/runtime.cpp`, behind the same launchers as
//! on a GPU ([`super::Target::Sim`]).
//!
//! Device memory here is host memory that a [`SimDevice`] allocates
//! ([`SimMem`]): a kernel's pointer arguments are the host addresses of these
//! allocations. Each allocation has guard bytes on both sides, checked after
//! every launch, so a kernel that writes past its buffer fails its launch.
//!
//! Options ([`SimConfig`]): the thread schedule inside a block
//! ([`Schedule`]), the number of worker threads, the race mode (every launch
//! runs under [`RACE_SCHEDULES`] from the same memory, and any byte of any
//! allocation that differs between them fails the launch: a kernel whose
//! result depends on the interleaving has a race), and a planted bug
//! ([`Plant`], tests only) that swaps a family's kernels for a patched copy.
//!
//! What the layer proves and what it cannot: docs/kernels.md, "The CPU layer".
//!
//! Public items: [`SimDevice`], [`SimMem`], [`SimConfig`], [`Schedule`],
//! [`BlockOrder`], [`Plant`], [`SimStats`], [`SimKernel`], [`kernels`],
//! [`RACE_SCHEDULES`], [`GENERATED_DIR`], [`SOURCE_DIR`].

use super::{Family, KArg, LaunchDims};
use crate::{KernelError, Result};
use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::{Arc, Mutex};

/// Where build.rs wrote the generated translation units and planted copies
/// (for the ThreadSanitizer test, which compiles them again).
pub const GENERATED_DIR: &str = concat!(env!("OUT_DIR"), "/sim");
/// The CPU layer's own sources (`runtime.cpp`, `include/`, `selftest.cu`).
pub const SOURCE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/sim");

#[repr(C)]
struct CArg {
    kind: i32,
    size: i32,
}

#[repr(C)]
struct CLaunch {
    kernel: *const c_char,
    grid: [u32; 3],
    block: [u32; 3],
    smem: u32,
    params: *const *mut c_void,
    args: *const CArg,
    nargs: i32,
    schedule: i32,
    seed: u64,
    workers: i32,
    block_order: i32,
    poison_smem: i32,
    smem_optin: i32,
}

/// Work the layer did (summed over launches).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    pub blocks: u64,
    pub threads: u64,
    /// fiber switches (each thread runs until it blocks at a barrier or collective)
    pub switches: u64,
    pub barriers: u64,
    /// completed warp collectives (shuffles, votes, __syncwarp, mma, ldmatrix)
    pub collectives: u64,
    pub mma: u64,
}

impl SimStats {
    fn add(&mut self, o: &SimStats) {
        self.blocks += o.blocks;
        self.threads += o.threads;
        self.switches += o.switches;
        self.barriers += o.barriers;
        self.collectives += o.collectives;
        self.mma += o.mma;
    }
}

extern "C" {
    fn cuda_sim_launch(req: *const CLaunch, stats: *mut SimStats, err: *mut c_char, errlen: usize) -> c_int;
    fn cuda_sim_kernel_count() -> c_int;
    fn cuda_sim_kernel_info(i: c_int, name: *mut *const c_char, nargs: *mut c_int, max_threads: *mut c_int) -> c_int;
    fn cuda_sim_kernel_arg(i: c_int, a: c_int, kind: *mut c_int, size: *mut c_int) -> c_int;
}

/// The order in which the threads of a block run between synchronisation
/// points (each thread runs until it reaches a barrier or a warp collective).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// thread order, one run per thread per pass (close to lockstep warps)
    RoundRobin,
    /// the lowest ready thread first: warp 0 runs ahead as far as it can
    LowestFirst,
    /// the highest ready thread first: the last warp runs ahead
    HighestFirst,
    /// a seeded random pick among the ready threads at every switch
    Random(u64),
}

/// The order in which blocks are handed to the workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockOrder {
    InOrder,
    Reversed,
    Shuffled(u64),
}

/// The schedules of the race mode: the first run's memory is the result,
/// every other run must reproduce it byte for byte.
pub const RACE_SCHEDULES: [(Schedule, BlockOrder); 5] = [
    (Schedule::RoundRobin, BlockOrder::InOrder),
    (Schedule::LowestFirst, BlockOrder::Reversed),
    (Schedule::HighestFirst, BlockOrder::InOrder),
    (Schedule::Random(0x5EED_0001), BlockOrder::Shuffled(0x5EED_0001)),
    (Schedule::Random(0x5EED_0002), BlockOrder::Shuffled(0x5EED_0002)),
];

/// Bugs planted in copies of five kernels (tests only): build.rs compiles
/// the copy of the family's `.cu` with one exact edit under the names
/// `planted:<tag>:<kernel>`; with a plant set, the device launches those
/// instead of the family's kernels. The shipped `.cu` files are untouched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plant {
    /// attention v1 forward reads KV head `h % n_kv_head` (an index bug)
    GqaIndex,
    /// cross-entropy's barrier before the dlogits overwrite is gone (a missing barrier)
    CeBarrier,
    /// the tensor-core forward's P fragment has a1 and a2 swapped (a fragment layout)
    MmaFragment,
    /// the v3 forward reads a K/V tile without waiting for its cp.async group
    CpAsyncWait,
    /// the fused QKV split/pack rotates by the negated angle (a sign bug; the
    /// 16-byte path, hd % 16 == 0)
    QkvSinSign,
}

impl Plant {
    pub const ALL: [Plant; 5] = [Plant::GqaIndex, Plant::CeBarrier, Plant::MmaFragment, Plant::CpAsyncWait, Plant::QkvSinSign];
    /// The tag in the planted kernels' names (build_sim.rs, PLANTS).
    pub fn tag(self) -> &'static str {
        match self {
            Plant::GqaIndex => "gqa_index",
            Plant::CeBarrier => "ce_barrier",
            Plant::MmaFragment => "mma_fragment",
            Plant::CpAsyncWait => "cp_async_wait",
            Plant::QkvSinSign => "qkv_sin_sign",
        }
    }
    /// The family whose kernels the plant replaces.
    pub fn family(self) -> Family {
        match self {
            Plant::GqaIndex => Family::Attention,
            Plant::CeBarrier => Family::CrossEntropy,
            Plant::MmaFragment => Family::AttentionMma,
            Plant::CpAsyncWait => Family::AttentionV3,
            Plant::QkvSinSign => Family::Rope,
        }
    }
}

/// How a [`SimDevice`] runs its launches.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub schedule: Schedule,
    pub block_order: BlockOrder,
    /// worker OS threads (blocks run concurrently on them); 0: all cores
    pub workers: usize,
    /// run every launch under [`RACE_SCHEDULES`] and compare all memory
    pub race: bool,
    /// fill dynamic shared memory with 0xff (NaN) at every block start
    pub poison_smem: bool,
    /// launch the planted copy of a family instead (tests only)
    pub plant: Option<Plant>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig { schedule: Schedule::RoundRobin, block_order: BlockOrder::InOrder, workers: 0, race: false, poison_smem: true, plant: None }
    }
}

/// Guard bytes on each side of an allocation, and their value.
const GUARD: usize = 64;
const GUARD_BYTE: u8 = 0xA5;
/// Alignment of allocations (cudaMalloc gives at least 256 bytes).
const ALIGN: usize = 256;

/// The live allocations of a device: base address (after the front guard) -> length.
#[derive(Default)]
struct Registry {
    allocs: Mutex<BTreeMap<u64, usize>>,
}

/// An allocation of device memory on the CPU layer: `len` bytes at
/// [`SimMem::addr`], zeroed or filled as asked. Like device memory it is
/// written by kernels through its address, so it hands out no references:
/// data moves in and out by copy.
pub struct SimMem {
    ptr: *mut u8,
    len: usize,
    reg: Arc<Registry>,
}

// SAFETY: SimMem owns its allocation; its bytes are only touched by copies
// through &self methods (serialised by the caller like device memcpys) and
// by kernels during a launch (the launch is synchronous and serialised by
// the layer's launch lock).
unsafe impl Send for SimMem {}
unsafe impl Sync for SimMem {}

impl SimMem {
    /// The block behind an allocation of `len` bytes: the data starts at
    /// `ALIGN` (so it is ALIGN-aligned), the front guard fills the GUARD bytes
    /// before it, the back guard the GUARD bytes after it.
    fn layout(len: usize) -> Option<std::alloc::Layout> {
        std::alloc::Layout::from_size_align(ALIGN.checked_add(len)?.checked_add(GUARD)?, ALIGN).ok()
    }
    /// The device address of the first byte.
    pub fn addr(&self) -> u64 {
        self.ptr as u64
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    fn check(&self, off: usize, n: usize) {
        assert!(off.checked_add(n).is_some_and(|e| e <= self.len), "SimMem access [{off}, {off}+{n}) outside {} bytes", self.len);
    }
    /// Copies `src` to byte offset `off`.
    pub fn write<T: bytemuck::Pod>(&self, off: usize, src: &[T]) {
        let bytes: &[u8] = bytemuck::cast_slice(src);
        self.check(off, bytes.len());
        // SAFETY: in bounds (checked); the allocation is live while self is
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(off), bytes.len()) };
    }
    /// Copies from byte offset `off` into `dst`.
    pub fn read<T: bytemuck::Pod>(&self, off: usize, dst: &mut [T]) {
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(dst);
        self.check(off, bytes.len());
        // SAFETY: in bounds (checked); the allocation is live while self is
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(off), bytes.as_mut_ptr(), bytes.len()) };
    }
    /// Sets `n` bytes at `off` to `byte`.
    pub fn fill(&self, off: usize, n: usize, byte: u8) {
        self.check(off, n);
        // SAFETY: in bounds (checked)
        unsafe { std::ptr::write_bytes(self.ptr.add(off), byte, n) };
    }
    /// Copies `n` bytes from `src` at `soff` to `doff` (the two may be the same allocation).
    pub fn copy_from(&self, doff: usize, src: &SimMem, soff: usize, n: usize) {
        self.check(doff, n);
        src.check(soff, n);
        // SAFETY: both ranges in bounds (checked); copy handles overlap
        unsafe { std::ptr::copy(src.ptr.add(soff), self.ptr.add(doff), n) };
    }
}

impl Drop for SimMem {
    fn drop(&mut self) {
        if let Ok(mut a) = self.reg.allocs.lock() {
            a.remove(&(self.ptr as u64));
        }
        if let Some(layout) = Self::layout(self.len) {
            // SAFETY: allocated in SimDevice::alloc_filled with this layout, data at +ALIGN
            unsafe { std::alloc::dealloc(self.ptr.sub(ALIGN), layout) };
        }
    }
}

/// A device of the CPU layer: allocations, launch options, work counters.
pub struct SimDevice {
    cfg: Mutex<SimConfig>,
    reg: Arc<Registry>,
    stats: Mutex<SimStats>,
    /// launches per kernel name (the name actually run: a planted copy's own)
    launches: Mutex<BTreeMap<String, u64>>,
}

fn sim_err(kernel: &'static str, dims: LaunchDims, msg: String) -> KernelError {
    KernelError::Launch { kernel, grid: dims.grid, block: dims.block, smem: dims.smem, msg: format!("on the CPU layer: {msg}") }
}

impl SimDevice {
    pub fn new(cfg: SimConfig) -> Self {
        SimDevice { cfg: Mutex::new(cfg), reg: Arc::new(Registry::default()), stats: Mutex::new(SimStats::default()), launches: Mutex::new(BTreeMap::new()) }
    }

    pub fn config(&self) -> SimConfig {
        self.cfg.lock().map(|c| c.clone()).unwrap_or_default()
    }
    pub fn set_config(&self, cfg: SimConfig) {
        if let Ok(mut c) = self.cfg.lock() {
            *c = cfg;
        }
    }
    /// Sets (or clears) the planted bug (tests only).
    pub fn set_plant(&self, plant: Option<Plant>) {
        if let Ok(mut c) = self.cfg.lock() {
            c.plant = plant;
        }
    }
    /// Work done by every launch so far.
    pub fn stats(&self) -> SimStats {
        self.stats.lock().map(|s| *s).unwrap_or_default()
    }
    /// How many times each kernel was launched (by the name that ran).
    pub fn launch_counts(&self) -> BTreeMap<String, u64> {
        self.launches.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// `len` bytes of device memory, zeroed.
    pub fn alloc(&self, len: usize) -> Result<SimMem> {
        self.alloc_filled(len, 0)
    }

    /// `len` bytes of device memory, every byte `byte` (0xff: NaN in f32 and
    /// bf16, for memory a kernel must write before it reads).
    pub fn alloc_filled(&self, len: usize, byte: u8) -> Result<SimMem> {
        let fail = || KernelError::Cuda { what: format!("allocating {len} bytes on the CPU layer"), msg: "out of memory".into() };
        let layout = SimMem::layout(len).ok_or_else(fail)?;
        // SAFETY: layout has a non-zero size (ALIGN + GUARD > 0)
        let base = unsafe { std::alloc::alloc(layout) };
        if base.is_null() {
            return Err(fail());
        }
        // SAFETY: base..base+ALIGN+len+GUARD is the allocation
        let ptr = unsafe { base.add(ALIGN) };
        // SAFETY: guards and data lie inside the allocation
        unsafe {
            std::ptr::write_bytes(ptr.sub(GUARD), GUARD_BYTE, GUARD);
            std::ptr::write_bytes(ptr, byte, len);
            std::ptr::write_bytes(ptr.add(len), GUARD_BYTE, GUARD);
        }
        if let Ok(mut a) = self.reg.allocs.lock() {
            a.insert(ptr as u64, len);
        }
        Ok(SimMem { ptr, len, reg: self.reg.clone() })
    }

    /// (address, length) of every live allocation.
    fn allocations(&self) -> Vec<(u64, usize)> {
        self.reg.allocs.lock().map(|a| a.iter().map(|(&k, &v)| (k, v)).collect()).unwrap_or_default()
    }

    /// The first allocation whose guard bytes a kernel overwrote.
    fn check_guards(&self) -> Option<String> {
        for (addr, len) in self.allocations() {
            let p = addr as *const u8;
            // SAFETY: the registry holds live allocations only (removed before dealloc)
            let (front, back) = unsafe { (std::slice::from_raw_parts(p.sub(GUARD), GUARD), std::slice::from_raw_parts(p.add(len), GUARD)) };
            if let Some(i) = back.iter().position(|&b| b != GUARD_BYTE) {
                return Some(format!("wrote past the end of the {len}-byte allocation at {addr:#x} (byte {len}+{i})"));
            }
            if let Some(i) = front.iter().position(|&b| b != GUARD_BYTE) {
                return Some(format!("wrote before the start of the {len}-byte allocation at {addr:#x} (byte -{})", GUARD - i));
            }
        }
        None
    }

    fn snapshot(&self) -> Vec<(u64, Vec<u8>)> {
        self.allocations()
            .into_iter()
            .map(|(addr, len)| {
                // SAFETY: a live allocation of len bytes (see check_guards)
                (addr, unsafe { std::slice::from_raw_parts(addr as *const u8, len) }.to_vec())
            })
            .collect()
    }

    fn restore(snap: &[(u64, Vec<u8>)]) {
        for (addr, bytes) in snap {
            // SAFETY: taken from live allocations just before; none is freed during a launch
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), *addr as *mut u8, bytes.len()) };
        }
    }

    /// Launches `kernel` of `family` (the plant, if set for this family,
    /// swaps in its planted copy) with the device's configuration.
    ///
    /// # Safety
    /// As [`super::Target::launch`]: every pointer argument is the address of
    /// a live [`SimMem`] of this device (or inside one) covering what the
    /// kernel accesses.
    pub(crate) unsafe fn launch_family(&self, family: Family, kernel: &'static str, dims: LaunchDims, args: &[KArg]) -> Result<()> {
        let cfg = self.config();
        let name = match cfg.plant {
            Some(p) if p.family() == family => format!("planted:{}:{kernel}", p.tag()),
            _ => kernel.to_string(),
        };
        // SAFETY: the caller's contract
        unsafe { self.launch_named(&name, kernel, dims, args, &cfg, dims.smem > super::SMEM_NO_OPTIN) }
    }

    /// Launches any kernel of the layer by name (its own unit tests: the
    /// `selftest_*` kernels), with the device's configuration (no opt-in
    /// for more than 48 KiB of dynamic shared memory).
    ///
    /// # Safety
    /// As `launch_family`.
    pub unsafe fn launch(&self, kernel: &'static str, dims: LaunchDims, args: &[KArg]) -> Result<()> {
        let cfg = self.config();
        // SAFETY: the caller's contract
        unsafe { self.launch_named(kernel, kernel, dims, args, &cfg, false) }
    }

    unsafe fn launch_named(&self, name: &str, label: &'static str, dims: LaunchDims, args: &[KArg], cfg: &SimConfig, optin: bool) -> Result<()> {
        if let Ok(mut l) = self.launches.lock() {
            *l.entry(name.to_string()).or_default() += 1;
        }
        let runs: Vec<(Schedule, BlockOrder)> = if cfg.race { RACE_SCHEDULES.to_vec() } else { vec![(cfg.schedule, cfg.block_order)] };
        let before = if runs.len() > 1 { Some(self.snapshot()) } else { None };
        let mut first: Option<Vec<(u64, Vec<u8>)>> = None;
        for (k, &(sched, order)) in runs.iter().enumerate() {
            if let (Some(b), true) = (&before, k > 0) {
                Self::restore(b);
            }
            // SAFETY: the caller's contract
            unsafe { self.run_once(name, label, dims, args, cfg, sched, order, optin) }?;
            if let Some(msg) = self.check_guards() {
                return Err(sim_err(label, dims, format!("{name}: {msg}")));
            }
            if runs.len() > 1 {
                let now = self.snapshot();
                match &first {
                    None => first = Some(now),
                    Some(f) => {
                        if let Some(msg) = first_difference(f, &now) {
                            return Err(sim_err(
                                label,
                                dims,
                                format!(
                                    "{name}: a race: the result depends on the thread schedule ({:?}/{:?} vs {:?}/{:?}): {msg}",
                                    runs[0].0, runs[0].1, sched, order
                                ),
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    unsafe fn run_once(
        &self,
        name: &str,
        label: &'static str,
        dims: LaunchDims,
        args: &[KArg],
        cfg: &SimConfig,
        sched: Schedule,
        order: BlockOrder,
        optin: bool,
    ) -> Result<()> {
        #[repr(C, align(8))]
        #[derive(Clone, Copy)]
        struct Slot([u8; 8]);
        let mut slots: Vec<Slot> = Vec::with_capacity(args.len());
        let mut sig: Vec<CArg> = Vec::with_capacity(args.len());
        for a in args {
            let mut s = [0u8; 8];
            let (kind, size) = match *a {
                KArg::Ptr(x) => {
                    s.copy_from_slice(&x.to_ne_bytes());
                    (1, 8)
                }
                KArg::I64(x) => {
                    s.copy_from_slice(&x.to_ne_bytes());
                    (2, 8)
                }
                KArg::I32(x) => {
                    s[..4].copy_from_slice(&x.to_ne_bytes());
                    (2, 4)
                }
                KArg::F32(x) => {
                    s[..4].copy_from_slice(&x.to_ne_bytes());
                    (3, 4)
                }
            };
            slots.push(Slot(s));
            sig.push(CArg { kind, size });
        }
        let params: Vec<*mut c_void> = slots.iter_mut().map(|s| s.0.as_mut_ptr() as *mut c_void).collect();
        let cname = CString::new(name).map_err(|_| sim_err(label, dims, "kernel name with a NUL byte".into()))?;
        let (schedule, seed) = match sched {
            Schedule::RoundRobin => (0, 0),
            Schedule::LowestFirst => (1, 0),
            Schedule::HighestFirst => (2, 0),
            Schedule::Random(s) => (3, s),
        };
        let (block_order, order_seed) = match order {
            BlockOrder::InOrder => (0, 0),
            BlockOrder::Reversed => (1, 0),
            BlockOrder::Shuffled(s) => (2, s),
        };
        let req = CLaunch {
            kernel: cname.as_ptr(),
            grid: [dims.grid.0, dims.grid.1, dims.grid.2],
            block: [dims.block, 1, 1],
            smem: dims.smem,
            params: params.as_ptr(),
            args: sig.as_ptr(),
            nargs: args.len() as i32,
            schedule,
            seed: seed ^ order_seed.rotate_left(32),
            workers: i32::try_from(cfg.workers).unwrap_or(0),
            block_order,
            poison_smem: cfg.poison_smem as i32,
            smem_optin: optin as i32,
        };
        let mut st = SimStats::default();
        let mut err = vec![0 as c_char; 2048];
        // SAFETY: req points at live argument slots and signature entries
        // for the duration of the call; the pointer arguments satisfy the
        // caller's contract; err is a writable buffer of its length.
        let rc = unsafe { cuda_sim_launch(&req, &mut st, err.as_mut_ptr(), err.len()) };
        if let Ok(mut s) = self.stats.lock() {
            s.add(&st);
        }
        if rc != 0 {
            // SAFETY: the runtime writes a NUL-terminated message into err
            let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned();
            return Err(sim_err(label, dims, msg));
        }
        Ok(())
    }
}

/// Where two snapshots of the same allocations first differ.
fn first_difference(a: &[(u64, Vec<u8>)], b: &[(u64, Vec<u8>)]) -> Option<String> {
    for ((addr, x), (_, y)) in a.iter().zip(b) {
        if let Some(i) = x.iter().zip(y).position(|(p, q)| p != q) {
            let n = x.iter().zip(y).filter(|(p, q)| p != q).count();
            return Some(format!("{n} of the {} bytes of the allocation at {addr:#x} differ, first at byte {i}", x.len()));
        }
    }
    None
}

/// A kernel of the CPU layer's library: name, parameters (kind: 1 pointer,
/// 2 integer, 3 float; size in bytes) and `__launch_bounds__` (0: none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimKernel {
    pub name: String,
    pub args: Vec<(i32, i32)>,
    pub max_threads: i32,
}

/// Every kernel compiled into the layer: the families' kernels under their
/// own names, the planted copies as `planted:<tag>:<name>`, and the
/// layer's `selftest_*` kernels.
pub fn kernels() -> Vec<SimKernel> {
    // SAFETY: pure queries of static tables
    let n = unsafe { cuda_sim_kernel_count() };
    (0..n)
        .filter_map(|i| {
            let (mut name, mut nargs, mut bound) = (std::ptr::null(), 0, 0);
            // SAFETY: out-pointers to locals; the name is a static C string
            if unsafe { cuda_sim_kernel_info(i, &mut name, &mut nargs, &mut bound) } != 0 || name.is_null() {
                return None;
            }
            // SAFETY: as above
            let name = unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned();
            let args = (0..nargs)
                .map(|a| {
                    let (mut k, mut s) = (0, 0);
                    // SAFETY: out-pointers to locals, a < nargs
                    unsafe { cuda_sim_kernel_arg(i, a, &mut k, &mut s) };
                    (k, s)
                })
                .collect();
            Some(SimKernel { name, args, max_threads: bound })
        })
        .collect()
}
