//! Loading the kernels: every embedded program compiled by NVRTC for the card's architecture,
//! the PTX kept in a disk cache, each module loaded into the context once, and every kernel
//! looked up by its name (`rms_norm_bf16`).
//!
//! The cache key is a hash of the program's text and of every header, the architecture and the
//! NVRTC version, so an edited kernel or another compiler never reuses stale PTX. The cache lives
//! under `$XDG_CACHE_HOME/llmq` or `~/.cache/llmq`; a cache that cannot be written is skipped.

use super::nvrtc::{self, NvrtcError, SOURCES};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, DriverError};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;

/// Why the kernels could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// NVRTC failed.
    #[error(transparent)]
    Nvrtc(#[from] NvrtcError),
    /// The driver refused the PTX or a kernel name.
    #[error("loading {what}: {source}")]
    Driver {
        /// The program or kernel concerned.
        what: String,
        /// The driver's status.
        source: DriverError,
    },
    /// No program defines the kernel.
    #[error("no kernel `{0}` in kernels/cuda/ (see the naming rule in common.cuh)")]
    Missing(String),
}

/// Every kernel of every embedded program, by name.
pub struct Modules {
    kernels: HashMap<String, (Arc<CudaModule>, String)>,
}

impl Modules {
    /// Compiles (or reads from the cache) and loads every program for `arch` (`compute_90`).
    pub fn load(ctx: &Arc<CudaContext>, arch: &str) -> Result<Self, ModuleError> {
        let include_dirs = nvrtc::default_include_dirs();
        let mut kernels = HashMap::new();
        for program in nvrtc::programs() {
            let ptx = cached_ptx(program.name, arch, &include_dirs)?;
            let entries: Vec<String> = nvrtc::ptx_entries(&ptx)
                .into_iter()
                .map(str::to_string)
                .collect();
            let module =
                ctx.load_module(Ptx::from_src(ptx))
                    .map_err(|source| ModuleError::Driver {
                        what: program.name.to_string(),
                        source,
                    })?;
            for entry in entries {
                kernels.insert(entry.clone(), (module.clone(), entry));
            }
        }
        Ok(Modules { kernels })
    }

    /// The kernel called `name`.
    pub fn function(&self, name: &str) -> Result<CudaFunction, ModuleError> {
        let (module, entry) = self
            .kernels
            .get(name)
            .ok_or_else(|| ModuleError::Missing(name.to_string()))?;
        module
            .load_function(entry)
            .map_err(|source| ModuleError::Driver {
                what: name.to_string(),
                source,
            })
    }
}

/// The PTX of `program` for `arch`, from the disk cache or freshly compiled (then cached).
fn cached_ptx(program: &str, arch: &str, include_dirs: &[PathBuf]) -> Result<String, NvrtcError> {
    let path = cache_dir().map(|d| d.join(format!("{}-{}.ptx", program, cache_key(program, arch))));
    if let Some(ptx) = path.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
        return Ok(ptx);
    }
    let ptx = nvrtc::compile(program, arch, include_dirs)?;
    if let Some(path) = path {
        // A read-only or full cache directory only costs a recompile next time.
        let _ = std::fs::create_dir_all(path.parent().unwrap_or(&path))
            .and_then(|()| std::fs::write(&path, &ptx));
    }
    Ok(ptx)
}

/// `$XDG_CACHE_HOME/llmq` or `~/.cache/llmq`.
fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("llmq"))
}

/// A hash of the program and every header, the architecture and the NVRTC version. (std's
/// hasher may change between Rust releases; that only costs one recompile.)
fn cache_key(program: &str, arch: &str) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for s in SOURCES
        .iter()
        .filter(|s| s.name == program || s.is_header())
    {
        s.name.hash(&mut h);
        s.text.hash(&mut h);
    }
    arch.hash(&mut h);
    nvrtc_version().hash(&mut h);
    format!("{:016x}", h.finish())
}

/// NVRTC's (major, minor) version.
fn nvrtc_version() -> (i32, i32) {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC was checked to be loadable before any kernel is compiled; the two pointers
    // are to live locals.
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    (major, minor)
}
