//! The CUDA C sources of `kernels/cuda/`, embedded in the binary, and their compilation to PTX
//! with NVRTC (through cudarc's dynamically loaded NVRTC bindings).
//!
//! Every `.cu` file is one program; every `.cuh` file is handed to NVRTC as a named header, so
//! `#include "common.cuh"` resolves without the files on disk. The CUDA headers the kernels
//! include (`cuda_bf16.h`, `cuda_fp8.h`) come from the include directories the caller passes:
//! [`default_include_dirs`] reads `LLMQ_CUDA_INCLUDE` (default `/usr/local/cuda/include`).
//!
//! NVRTC is loaded on first use. cudarc panics when a library it needs is missing, so
//! [`compile`] first checks that the library can be loaded and returns
//! [`NvrtcError::NotFound`] otherwise.

use cudarc::nvrtc::{result, sys};
use std::ffi::{CStr, CString, c_char};
use std::path::PathBuf;
use std::sync::OnceLock;

/// One embedded file of `kernels/cuda/`.
#[derive(Clone, Copy, Debug)]
pub struct Source {
    /// The file name (`rms_norm.cu`, `common.cuh`), also the name it is included by.
    pub name: &'static str,
    /// The file's text.
    pub text: &'static str,
}

impl Source {
    /// True for a header (`.cuh`): included by the programs, not compiled on its own.
    pub fn is_header(&self) -> bool {
        self.name.ends_with(".cuh")
    }
}

macro_rules! source {
    ($name:literal) => {
        Source {
            name: $name,
            text: include_str!(concat!("../../../../kernels/cuda/", $name)),
        }
    };
}

/// Every file of `kernels/cuda/`, sorted by name. A test checks that it lists every file there.
pub const SOURCES: &[Source] = &[
    source!("abs_max.cu"),
    source!("abs_max.cuh"),
    source!("adamw.cu"),
    source!("add.cu"),
    source!("add_rms_norm.cu"),
    source!("attention.cu"),
    source!("attention_mma.cu"),
    source!("bias_add.cu"),
    source!("cast.cu"),
    source!("classifier_cross_entropy.cu"),
    source!("clip_scale.cu"),
    source!("common.cuh"),
    source!("cross_entropy.cu"),
    source!("cross_entropy.cuh"),
    source!("embedding.cu"),
    source!("fp8_tile.cuh"),
    source!("quantize.cu"),
    source!("rms_norm.cu"),
    source!("rope.cu"),
    source!("rope.cuh"),
    source!("split.cu"),
    source!("split_rope.cu"),
    source!("sum_squares.cu"),
    source!("swiglu.cu"),
    source!("transpose.cu"),
    source!("zero.cu"),
];

/// The embedded file called `name`, if any.
pub fn source(name: &str) -> Option<&'static Source> {
    SOURCES.iter().find(|s| s.name == name)
}

/// The programs: every embedded `.cu` file.
pub fn programs() -> impl Iterator<Item = &'static Source> {
    SOURCES.iter().filter(|s| !s.is_header())
}

/// The directory of the CUDA headers: `LLMQ_CUDA_INCLUDE`, or `/usr/local/cuda/include`.
pub fn default_include_dirs() -> Vec<PathBuf> {
    let dir = std::env::var_os("LLMQ_CUDA_INCLUDE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/local/cuda/include"));
    vec![dir]
}

/// Why a kernel source could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum NvrtcError {
    /// No NVRTC library could be loaded.
    #[error(
        "NVRTC not found: no libnvrtc.so on the library path (set LD_LIBRARY_PATH, or \
         `source .ci/nvrtc.sh` to fetch one)"
    )]
    NotFound,
    /// The source name is not one of the embedded files.
    #[error("no kernel source `{name}` in kernels/cuda/")]
    UnknownSource {
        /// The name asked for.
        name: String,
    },
    /// A header or a name that cannot be a C string (an interior NUL byte).
    #[error("`{name}` contains a NUL byte")]
    Nul {
        /// The source, header or option concerned.
        name: String,
    },
    /// NVRTC failed before or after compiling (creating the program, reading the PTX).
    #[error("NVRTC failed on {source_name} while {stage}: {error:?}")]
    Nvrtc {
        /// The program.
        source_name: String,
        /// What was being done.
        stage: &'static str,
        /// NVRTC's status.
        error: result::NvrtcError,
    },
    /// The compilation failed; the log says why.
    #[error("NVRTC could not compile {source_name} for {arch} ({options}):\n{log}")]
    Compile {
        /// The program.
        source_name: String,
        /// The target architecture.
        arch: String,
        /// The options passed, space-separated.
        options: String,
        /// NVRTC's log.
        log: String,
    },
}

/// A compiled program: its PTX and NVRTC's log (warnings; empty when there were none).
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The PTX text.
    pub ptx: String,
    /// NVRTC's log.
    pub log: String,
}

/// True when an NVRTC library can be loaded (checked once, then remembered).
pub fn is_available() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    // SAFETY: `is_culib_present` only tries to open the library by its candidate names with
    // libloading, and closes what it opened; loading NVRTC runs no initialisers that matter.
    *PRESENT.get_or_init(|| unsafe { sys::is_culib_present() })
}

/// Compiles the embedded program `source_name` (`rms_norm.cu`) for `arch` (`sm_90`,
/// `compute_90`) to PTX, with every embedded header available by name and `include_dirs` on
/// the include path (for `cuda_bf16.h` and `cuda_fp8.h`; see [`default_include_dirs`]).
pub fn compile(
    source_name: &str,
    arch: &str,
    include_dirs: &[PathBuf],
) -> Result<String, NvrtcError> {
    compile_with_log(source_name, arch, include_dirs).map(|c| c.ptx)
}

/// [`compile`], keeping NVRTC's log (its warnings) beside the PTX.
pub fn compile_with_log(
    source_name: &str,
    arch: &str,
    include_dirs: &[PathBuf],
) -> Result<Compiled, NvrtcError> {
    let src = source(source_name)
        .filter(|s| !s.is_header())
        .ok_or_else(|| NvrtcError::UnknownSource {
            name: source_name.to_string(),
        })?;
    if !is_available() {
        return Err(NvrtcError::NotFound);
    }
    let c = |name: &str, text: &str| {
        CString::new(text).map_err(|_| NvrtcError::Nul {
            name: name.to_string(),
        })
    };
    let text = c(src.name, src.text)?;
    let name = c(src.name, src.name)?;
    let headers: Vec<&Source> = SOURCES.iter().filter(|s| s.is_header()).collect();
    let header_texts = headers
        .iter()
        .map(|h| c(h.name, h.text))
        .collect::<Result<Vec<_>, _>>()?;
    let header_names = headers
        .iter()
        .map(|h| c(h.name, h.name))
        .collect::<Result<Vec<_>, _>>()?;
    let header_text_ptrs: Vec<*const c_char> = header_texts.iter().map(|s| s.as_ptr()).collect();
    let header_name_ptrs: Vec<*const c_char> = header_names.iter().map(|s| s.as_ptr()).collect();

    let mut options = vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()];
    options.extend(
        include_dirs
            .iter()
            .map(|d| format!("--include-path={}", d.display())),
    );

    let nvrtc = |stage: &'static str| {
        let source_name = source_name.to_string();
        move |error| NvrtcError::Nvrtc {
            source_name,
            stage,
            error,
        }
    };
    let mut prog: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: every pointer is to a NUL-terminated string alive until the program is destroyed
    // below; the two header arrays have `headers.len()` entries each.
    unsafe {
        sys::nvrtcCreateProgram(
            &mut prog,
            text.as_ptr(),
            name.as_ptr(),
            headers.len() as i32,
            header_text_ptrs.as_ptr(),
            header_name_ptrs.as_ptr(),
        )
    }
    .result()
    .map_err(nvrtc("creating the program"))?;

    // SAFETY: `prog` was created above and is destroyed only after this block.
    let outcome = unsafe {
        let compiled = result::compile_program(prog, &options);
        let log = result::get_program_log(prog).map(|l| c_chars_to_string(&l));
        match (compiled, log) {
            (Ok(()), Ok(log)) => result::get_ptx(prog)
                .map(|ptx| Compiled {
                    ptx: c_chars_to_string(&ptx),
                    log,
                })
                .map_err(nvrtc("reading the PTX")),
            (Err(_), Ok(log)) => Err(NvrtcError::Compile {
                source_name: source_name.to_string(),
                arch: arch.to_string(),
                options: options.join(" "),
                log,
            }),
            (_, Err(e)) => Err(nvrtc("reading the log")(e)),
        }
    };
    // SAFETY: `prog` is a live program, destroyed once.
    unsafe { result::destroy_program(prog) }.map_err(nvrtc("destroying the program"))?;
    outcome
}

/// NVRTC's NUL-terminated output as a `String` (lossy, trailing NULs and whitespace removed).
fn c_chars_to_string(chars: &[c_char]) -> String {
    let bytes: Vec<u8> = chars.iter().map(|&c| c as u8).collect();
    match CStr::from_bytes_until_nul(&bytes) {
        Ok(s) => s.to_string_lossy().trim_end().to_string(),
        Err(_) => String::from_utf8_lossy(&bytes).trim_end().to_string(),
    }
}

/// The names of the kernels (`.entry` directives) a PTX text defines, in order.
pub fn ptx_entries(ptx: &str) -> Vec<&str> {
    ptx.lines()
        .filter_map(|line| {
            let rest = line.trim_start().strip_prefix(".visible .entry ")?;
            let end = rest.find(|c: char| c == '(' || c.is_whitespace())?;
            Some(&rest[..end])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_every_file_of_kernels_cuda() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../kernels/cuda");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .expect("kernels/cuda exists")
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".cu") || n.ends_with(".cuh"))
            .collect();
        on_disk.sort();
        let listed: Vec<&str> = SOURCES.iter().map(|s| s.name).collect();
        assert_eq!(
            listed, on_disk,
            "SOURCES in nvrtc.rs must list every file of kernels/cuda/, sorted"
        );
    }

    #[test]
    fn unknown_sources_and_headers_are_refused() {
        assert!(matches!(
            compile("nope.cu", "sm_90", &[]),
            Err(NvrtcError::UnknownSource { .. })
        ));
        assert!(matches!(
            compile("common.cuh", "sm_90", &[]),
            Err(NvrtcError::UnknownSource { .. })
        ));
    }

    #[test]
    fn entries_are_read_from_ptx() {
        let ptx = ".visible .entry add_f32(\n\t.param .u64 a\n)\n.visible .entry add_bf16(\n";
        assert_eq!(ptx_entries(ptx), ["add_f32", "add_bf16"]);
    }
}
