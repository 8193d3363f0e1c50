//! The ONNX Runtime library: found at run time (`ort`'s load-dynamic), loaded once per process.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::engine::EngineError;

/// Where the library is looked for, in order: `explicit` (REVO_ORT_DYLIB), `ORT_DYLIB_PATH`,
/// then where `scripts/fetch-ort.sh` puts it.
pub fn locate_runtime(explicit: Option<&Path>) -> Result<PathBuf, EngineError> {
    let mut tried = Vec::new();
    let env = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from);
    let cache = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/revo/ort/libonnxruntime.so.1.31.1"));
    for p in [explicit.map(Path::to_path_buf), env, cache]
        .into_iter()
        .flatten()
    {
        if p.is_file() {
            return Ok(p);
        }
        tried.push(p.display().to_string());
    }
    Err(EngineError::NoRuntime(tried.join(", ")))
}

static RUNTIME: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// Loads the library once per process.
pub(crate) fn runtime(path: &Path) -> Result<&'static ort::environment::Environment, EngineError> {
    RUNTIME
        .get_or_init(|| {
            ort::init_from(path)
                .map_err(|e| e.to_string())?
                .with_name("revo")
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|reason| EngineError::Runtime {
            path: path.to_owned(),
            reason: reason.clone(),
        })
}
