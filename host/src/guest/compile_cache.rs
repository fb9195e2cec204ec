//! Compiled guests kept on disk (`serve --compile-cache DIR`): compiling a
//! component with cranelift costs about half a second of CPU at every
//! start; loading the compiled artefact costs milliseconds. Entries are
//! named by the component's SHA-256 and the engine's compatibility hash,
//! so another wasmtime build or configuration never loads them.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmtime::component::Component;
use wasmtime::Engine;

/// Where the compiled form of `bytes` lives for this engine.
fn entry(dir: &Path, engine: &Engine, bytes: &[u8]) -> PathBuf {
    // Fixed keys: the same name in every process.
    #[allow(deprecated)]
    let mut hasher = std::hash::SipHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    dir.join(format!("{}-{:016x}.cwasm", super::registry::hash_of(bytes), hasher.finish()))
}

/// The component, from the cache when it holds it, else compiled (and then
/// stored; a cache that cannot be written only costs the next start time).
pub fn component(dir: Option<&Path>, engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Component> {
    let Some(dir) = dir else { return Component::new(engine, bytes) };
    let path = entry(dir, engine, bytes);
    if path.is_file() {
        // SAFETY: wasmtime runs whatever machine code the file holds. The
        // cache directory is the operator's (like the binary itself), its
        // entries are written only by `store` below, and wasmtime checks
        // the header against this engine before using one.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => {
                tracing::info!(path = %path.display(), "compiled guest loaded from the compile cache");
                return Ok(component);
            }
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "unusable compile-cache entry; recompiling"),
        }
    }
    let component = Component::new(engine, bytes)?;
    if let Err(e) = store(dir, &path, &component) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot write the compile cache");
    }
    Ok(component)
}

/// Writes the entry whole or not at all: to a temporary file, then renamed
/// (never rewritten in place: running servers have the old one mapped).
fn store(dir: &Path, path: &Path, component: &Component) -> Result<(), String> {
    let serialized = component.serialize().map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let temporary = tempfile_name(path);
    std::fs::write(&temporary, serialized).map_err(|e| e.to_string())?;
    std::fs::rename(&temporary, path).map_err(|e| {
        let _ = std::fs::remove_file(&temporary);
        e.to_string()
    })
}

fn tempfile_name(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{}.tmp", uuid::Uuid::new_v4()));
    PathBuf::from(name)
}
