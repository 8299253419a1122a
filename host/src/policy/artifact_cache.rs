//! Compiled plugins on disk, so a restart with unchanged plugins does not
//! recompile (compiling takes 10–200 ms a plugin; loading an artifact ~0.2 ms).
//!
//! An artifact is named by the wasm's sha256 and the engine's compatibility
//! hash, and stored next to the sha256 of its own bytes. Deserializing
//! native code must only ever see bytes this process wrote: an artifact whose
//! checksum does not match, or that wasmtime rejects, is ignored and rebuilt.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::component::Component;
use wasmtime::Engine;

pub struct ArtifactCache {
    dir: PathBuf,
    engine_tag: String,
}

/// The default folder: `$XDG_CACHE_HOME/cachet`, else `~/.cache/cachet`.
pub fn default_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|base| base.join("cachet"))
}

impl ArtifactCache {
    pub fn new(dir: PathBuf, engine: &Engine) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Self {
            dir,
            engine_tag: format!("{:016x}", hasher.finish()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn paths(&self, wasm_sha256: &str) -> (PathBuf, PathBuf) {
        let stem = format!("{wasm_sha256}-{}", self.engine_tag);
        (
            self.dir.join(format!("{stem}.cwasm")),
            self.dir.join(format!("{stem}.cwasm.sha256")),
        )
    }

    /// The component for `wasm`, from disk when a good artifact exists,
    /// otherwise compiled (and then written for next time).
    /// Returns the component and whether it came from the cache.
    pub fn component(
        &self,
        engine: &Engine,
        wasm: &[u8],
        wasm_sha256: &str,
    ) -> wasmtime::Result<(Component, bool)> {
        let (artifact, checksum) = self.paths(wasm_sha256);
        if let Some(component) = Self::read_trusted(engine, &artifact, &checksum) {
            return Ok((component, true));
        }
        let serialized = engine.precompile_component(wasm)?;
        // SAFETY: the bytes were produced by this engine a moment ago.
        let component = unsafe { Component::deserialize(engine, &serialized)? };
        if let Err(e) = self.write(&artifact, &checksum, &serialized) {
            tracing::warn!(dir = %self.dir.display(), "cannot write compiled plugin cache: {e}");
        }
        Ok((component, false))
    }

    fn read_trusted(engine: &Engine, artifact: &Path, checksum: &Path) -> Option<Component> {
        let bytes = std::fs::read(artifact).ok()?;
        let expected = std::fs::read_to_string(checksum).ok()?;
        if hex::encode(Sha256::digest(&bytes)) != expected.trim() {
            tracing::warn!(artifact = %artifact.display(), "compiled plugin cache entry is corrupt; recompiling");
            return None;
        }
        // SAFETY: the bytes match the checksum written with them by
        // `write`, and wasmtime checks the engine compatibility header.
        match unsafe { Component::deserialize(engine, &bytes) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(artifact = %artifact.display(), "compiled plugin cache entry refused ({e}); recompiling");
                None
            }
        }
    }

    fn write(&self, artifact: &Path, checksum: &Path, bytes: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        write_atomically(artifact, bytes)?;
        write_atomically(checksum, hex::encode(Sha256::digest(bytes)).as_bytes())
    }
}

/// Writes to a temporary file in the same folder, then renames over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAT: &[u8] = b"(component)";

    fn only_artifact(dir: &Path) -> PathBuf {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
            .expect("an artifact was written")
    }

    #[test]
    fn second_load_comes_from_disk_and_bad_artifacts_are_rebuilt() {
        let engine = Engine::default();
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::new(dir.path().to_path_buf(), &engine);
        let sha = "0".repeat(64);

        assert!(
            !cache.component(&engine, WAT, &sha).unwrap().1,
            "first load compiles"
        );
        assert!(
            cache.component(&engine, WAT, &sha).unwrap().1,
            "second load is cached"
        );

        // Corrupt bytes: the checksum no longer matches.
        let artifact = only_artifact(dir.path());
        let mut bytes = std::fs::read(&artifact).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&artifact, &bytes).unwrap();
        assert!(
            !cache.component(&engine, WAT, &sha).unwrap().1,
            "corrupt artifact recompiled"
        );
        assert!(
            cache.component(&engine, WAT, &sha).unwrap().1,
            "and rewritten"
        );

        // A foreign file whose checksum matches is still refused by wasmtime.
        let foreign = b"not a wasmtime artifact".to_vec();
        std::fs::write(&artifact, &foreign).unwrap();
        std::fs::write(
            artifact.with_extension("cwasm.sha256"),
            hex::encode(Sha256::digest(&foreign)),
        )
        .unwrap();
        assert!(
            !cache.component(&engine, WAT, &sha).unwrap().1,
            "foreign artifact recompiled"
        );
    }
}
