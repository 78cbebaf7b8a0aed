//! Reading the build's own reports without a GPU: the `ptxas -v` text of
//! each family (registers, stack frame, spills, shared memory per kernel and
//! target) and the entry points of the cubins embedded in a fatbin.
//!
//! Public items: [`KernelResources`], [`parse_ptxas`], [`fatbin_elf_entries`].

/// What ptxas reported for one kernel on one target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelResources {
    pub kernel: String,
    /// "sm_90a" or "sm_80"
    pub target: String,
    pub registers: u32,
    pub stack_frame: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
    /// static shared memory in bytes (dynamic shared memory is not in the report)
    pub smem: u32,
}

fn num_before(line: &str, unit: &str) -> Option<u32> {
    let i = line.find(unit)?;
    line[..i].split_whitespace().last()?.parse().ok()
}

/// Parses the `ptxas -v` output of one nvcc run (one entry per kernel and
/// target, in report order).
pub fn parse_ptxas(report: &str) -> Vec<KernelResources> {
    let mut out: Vec<KernelResources> = Vec::new();
    for line in report.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let mut parts = rest.split('\'');
            let kernel = parts.next().unwrap_or_default().to_string();
            let target = parts.nth(1).unwrap_or_default().to_string();
            out.push(KernelResources { kernel, target, registers: 0, stack_frame: 0, spill_stores: 0, spill_loads: 0, smem: 0 });
        } else if let Some(cur) = out.last_mut() {
            if line.contains("bytes stack frame") {
                cur.stack_frame = num_before(line, "bytes stack frame").unwrap_or(u32::MAX);
                cur.spill_stores = num_before(line, "bytes spill stores").unwrap_or(u32::MAX);
                cur.spill_loads = num_before(line, "bytes spill loads").unwrap_or(u32::MAX);
            } else if line.contains("Used") && line.contains("registers") {
                cur.registers = num_before(line, "registers").unwrap_or(u32::MAX);
                cur.smem = num_before(line, "bytes smem").unwrap_or(0);
            }
        }
    }
    out
}

fn rd<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at + N)?.try_into().ok()
}
fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(rd(b, at)?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(rd(b, at)?))
}
fn u64_at(b: &[u8], at: usize) -> Option<usize> {
    usize::try_from(u64::from_le_bytes(rd(b, at)?)).ok()
}

/// The global function symbols of one ELF64 (little-endian) image that
/// starts at `elf[0]`, from its symbol table. `None` if it is not readable.
fn elf_functions(elf: &[u8]) -> Option<Vec<String>> {
    if elf.get(0..4)? != b"\x7fELF" || *elf.get(4)? != 2 || *elf.get(5)? != 1 {
        return None;
    }
    let shoff = u64_at(elf, 0x28)?;
    let shentsize = u16_at(elf, 0x3A)? as usize;
    let shnum = u16_at(elf, 0x3C)? as usize;
    let sh = |i: usize| shoff + i * shentsize;
    let mut names = Vec::new();
    for i in 0..shnum {
        if u32_at(elf, sh(i) + 4)? != 2 {
            continue; // not SHT_SYMTAB
        }
        let (off, size) = (u64_at(elf, sh(i) + 24)?, u64_at(elf, sh(i) + 32)?);
        let link = u32_at(elf, sh(i) + 40)? as usize;
        let str_off = u64_at(elf, sh(link) + 24)?;
        for s in (off..off + size).step_by(24) {
            let info = *elf.get(s + 4)?;
            // STT_FUNC with STB_GLOBAL binding
            if info & 0xf == 2 && info >> 4 == 1 {
                let name_at = str_off + u32_at(elf, s)? as usize;
                let end = elf.get(name_at..)?.iter().position(|&c| c == 0)?;
                names.push(String::from_utf8_lossy(&elf[name_at..name_at + end]).into_owned());
            }
        }
    }
    Some(names)
}

/// The function symbols of every cubin embedded (uncompressed) in a fatbin:
/// one list per ELF image found, in image order. nvcc 13.0 does not
/// compress these small fatbins; if a later one does, no image is found and
/// the tests that use this fail loudly rather than pass vacuously.
pub fn fatbin_elf_entries(fatbin: &[u8]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 4 <= fatbin.len() {
        if &fatbin[i..i + 4] == b"\x7fELF" {
            if let Some(names) = elf_functions(&fatbin[i..]) {
                out.push(names);
            }
        }
        i += 4; // ELF images are 8-byte aligned in the container
    }
    out
}
