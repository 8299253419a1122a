//! Compiled plugins on disk, so a restart with unchanged plugins does not
//! recompile (compiling takes 10–200 ms a plugin; loading an artifact ~0.2 ms).
//!
//! An artifact is named by the wasm's sha256 and the engine's compatibility hash (plugin files
//! with the same bytes share it), and stored next to the sha256 of its own bytes.
//! Deserializing native code must only ever see bytes this user wrote ([`trust`]): a folder
//! others can write is not used at all, and an artifact whose checksum does not match, or that
//! wasmtime rejects, is rebuilt. The folder stays bounded ([`retention`]).

mod retention;
mod trust;

pub use retention::KEEP_PER_PLUGIN;

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;
use wasmtime::component::Component;
use wasmtime::Engine;

/// The default byte budget of the folder.
pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;

const ARTIFACT_EXTENSION: &str = "cwasm";

pub struct ArtifactCache {
    dir: PathBuf,
    engine_tag: String,
    max_bytes: u64,
}

/// The default folder: `$XDG_CACHE_HOME/cachet`, else `~/.cache/cachet`.
pub fn default_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            // An empty or relative HOME would put native code under the working folder.
            let home = PathBuf::from(std::env::var_os("HOME")?);
            home.is_absolute().then(|| home.join(".cache"))
        })
        .map(|base| base.join("cachet"))
}

impl ArtifactCache {
    pub fn new(dir: PathBuf, engine: &Engine, max_bytes: u64) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Self {
            dir,
            engine_tag: format!("{:016x}", hasher.finish()),
            max_bytes,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The artifact's file name for compiled bytes with this sha256.
    fn name(&self, wasm_sha256: &str) -> String {
        format!("{wasm_sha256}-{}.{ARTIFACT_EXTENSION}", self.engine_tag)
    }

    /// The component for `wasm` (read from the file `plugin`), from disk when a good artifact
    /// exists in a trusted folder, otherwise compiled (and then written for next time).
    /// Returns the component and whether it came from the cache. The plugin file's version
    /// list is only updated by [`ArtifactCache::remember`], once the plugin is accepted.
    pub fn component(
        &self,
        engine: &Engine,
        plugin: &Path,
        wasm: &[u8],
        wasm_sha256: &str,
    ) -> wasmtime::Result<(Component, bool)> {
        let dir = match trust::prepare_folder(&self.dir) {
            Ok(resolved) => Some(resolved),
            Err(why) => {
                tracing::warn!(
                    dir = %self.dir.display(),
                    "not using the compiled plugin cache: {why}; compiling {} instead",
                    plugin.display()
                );
                None
            }
        };
        let artifact = dir.as_ref().map(|dir| dir.join(self.name(wasm_sha256)));
        if let Some(artifact) = &artifact {
            if let Some(component) = Self::read_trusted(engine, artifact) {
                return Ok((component, true));
            }
        }
        let serialized = engine.precompile_component(wasm)?;
        // SAFETY: the bytes were produced by this engine a moment ago.
        let component = unsafe { Component::deserialize(engine, &serialized)? };
        if let (Some(dir), Some(artifact)) = (&dir, &artifact) {
            match Self::write(artifact, &serialized) {
                Ok(()) => retention::prune(dir, artifact, self.max_bytes),
                Err(e) => tracing::warn!(
                    artifact = %artifact.display(),
                    "cannot write compiled plugin cache: {e}"
                ),
            }
        }
        Ok((component, false))
    }

    /// Records that the file `plugin` now serves the code compiled from bytes with this
    /// sha256, so the folder's bound keeps it (and the versions before it) for a restart or a
    /// rollback. Called for accepted plugins only: refused builds must not push the serving
    /// version off the list.
    pub fn remember(&self, plugin: &Path, wasm_sha256: &str) {
        if let Ok(dir) = trust::prepare_folder(&self.dir) {
            let name = self.name(wasm_sha256);
            retention::remember(&dir, plugin, &name);
            // What the list no longer names goes now, not at the next compile.
            retention::prune(&dir, &dir.join(name), self.max_bytes);
        }
    }

    fn read_trusted(engine: &Engine, artifact: &Path) -> Option<Component> {
        let untrusted = |what: &Path, why: String| -> Option<Component> {
            tracing::warn!(file = %what.display(), "compiled plugin cache entry {why}; recompiling");
            None
        };
        let bytes = match trust::read_private(artifact) {
            Ok(bytes) => bytes,
            // Not written yet: nothing to warn about.
            Err(_) if std::fs::symlink_metadata(artifact).is_err() => return None,
            Err(why) => return untrusted(artifact, why),
        };
        let checksum = checksum_of(artifact);
        let expected = match trust::read_private(&checksum) {
            Ok(expected) => expected,
            Err(why) => return untrusted(&checksum, why),
        };
        if hex::encode(Sha256::digest(&bytes)).as_bytes() != expected.trim_ascii() {
            tracing::warn!(artifact = %artifact.display(), "compiled plugin cache entry is corrupt; recompiling");
            return None;
        }
        // SAFETY: the bytes come from a regular file only this user can write, opened without
        // following a link in a folder whose whole path only this user or root can change, and
        // match the checksum written with them by `write`; wasmtime checks
        // the engine compatibility header.
        match unsafe { Component::deserialize(engine, &bytes) } {
            Ok(component) => {
                // Recently used: the byte budget drops least recently used artifacts first.
                let _ = std::fs::File::options()
                    .write(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(artifact)
                    .and_then(|f| f.set_modified(SystemTime::now()));
                Some(component)
            }
            Err(e) => {
                tracing::warn!(artifact = %artifact.display(), "compiled plugin cache entry refused ({e}); recompiling");
                None
            }
        }
    }

    fn write(artifact: &Path, bytes: &[u8]) -> std::io::Result<()> {
        trust::write_private(artifact, bytes)?;
        let checksum = hex::encode(Sha256::digest(bytes));
        trust::write_private(&checksum_of(artifact), checksum.as_bytes())
    }
}

fn checksum_of(artifact: &Path) -> PathBuf {
    artifact.with_extension(format!("{ARTIFACT_EXTENSION}.sha256"))
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
        let cache = ArtifactCache::new(dir.path().to_path_buf(), &engine, DEFAULT_MAX_BYTES);
        let sha = "0".repeat(64);

        assert!(
            !cache
                .component(&engine, Path::new("p.wasm"), WAT, &sha)
                .unwrap()
                .1,
            "first load compiles"
        );
        assert!(
            cache
                .component(&engine, Path::new("p.wasm"), WAT, &sha)
                .unwrap()
                .1,
            "second load is cached"
        );

        // Corrupt bytes: the checksum no longer matches.
        let artifact = only_artifact(dir.path());
        let mut bytes = std::fs::read(&artifact).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&artifact, &bytes).unwrap();
        assert!(
            !cache
                .component(&engine, Path::new("p.wasm"), WAT, &sha)
                .unwrap()
                .1,
            "corrupt artifact recompiled"
        );
        assert!(
            cache
                .component(&engine, Path::new("p.wasm"), WAT, &sha)
                .unwrap()
                .1,
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
            !cache
                .component(&engine, Path::new("p.wasm"), WAT, &sha)
                .unwrap()
                .1,
            "foreign artifact recompiled"
        );
    }

    fn artifact_count(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == ARTIFACT_EXTENSION)
            })
            .count()
    }

    /// Artifact names come from the sha256 the caller gives, so one tiny component stands
    /// for many versions.
    fn version(n: usize) -> String {
        format!("{n:064}")
    }

    #[test]
    fn each_plugin_keeps_its_latest_versions_within_the_byte_budget() {
        let engine = Engine::default();
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::new(dir.path().to_path_buf(), &engine, DEFAULT_MAX_BYTES);
        let load = |cache: &ArtifactCache, plugin: &str, n: usize| {
            let cached = cache
                .component(&engine, Path::new(plugin), WAT, &version(n))
                .unwrap()
                .1;
            cache.remember(Path::new(plugin), &version(n));
            cached
        };
        for n in 0..6 {
            load(&cache, "a.wasm", n);
            load(&cache, "b.wasm", 100 + n);
        }
        assert_eq!(artifact_count(dir.path()), 2 * KEEP_PER_PLUGIN);
        // The kept ones are the latest: the newest versions load from disk, the oldest not.
        assert!(load(&cache, "a.wasm", 5));
        assert!(load(&cache, "b.wasm", 103));
        assert!(!load(&cache, "a.wasm", 0));
        // Another file with the same bytes shares the artifact.
        assert!(load(&cache, "copy-of-a.wasm", 5));

        // A budget below two artifacts keeps only the one just written.
        let one = std::fs::metadata(only_artifact(dir.path())).unwrap().len();
        let small = ArtifactCache::new(dir.path().to_path_buf(), &engine, one + one / 2);
        assert!(!load(&small, "c.wasm", 9));
        assert_eq!(artifact_count(dir.path()), 1);
        assert!(load(&small, "c.wasm", 9));
    }

    #[test]
    fn the_folder_is_private_and_a_folder_others_can_write_is_not_used() {
        use std::os::unix::fs::PermissionsExt;
        let engine = Engine::default();
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("artifacts");
        let cache = ArtifactCache::new(dir.clone(), &engine, DEFAULT_MAX_BYTES);
        let sha = version(1);
        cache
            .component(&engine, Path::new("p.wasm"), WAT, &sha)
            .unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let artifact = only_artifact(&dir);
        let file_mode = std::fs::metadata(&artifact).unwrap().permissions().mode() & 0o777;
        assert_eq!(file_mode, 0o600);

        for (path, mode) in [(&dir, 0o770), (&dir, 0o707), (&artifact, 0o666)] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert!(
                !cache
                    .component(&engine, Path::new("p.wasm"), WAT, &sha)
                    .unwrap()
                    .1,
                "{} mode {mode:o} refused",
                path.display()
            );
            let restore = if path == &dir { 0o700 } else { 0o600 };
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(restore)).unwrap();
        }
        assert!(
            cache
                .component(&engine, Path::new("p.wasm"), WAT, &sha)
                .unwrap()
                .1
        );
    }

    #[test]
    fn a_refused_build_does_not_push_the_serving_version_out() {
        let engine = Engine::default();
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::new(dir.path().to_path_buf(), &engine, DEFAULT_MAX_BYTES);
        let plugin = Path::new("p.wasm");
        cache.component(&engine, plugin, WAT, &version(0)).unwrap();
        cache.remember(plugin, &version(0));
        // Builds that are compiled, then refused (self-tests), are never remembered.
        for n in 1..=KEEP_PER_PLUGIN + 1 {
            cache.component(&engine, plugin, WAT, &version(n)).unwrap();
        }
        assert!(
            cache
                .component(&engine, plugin, WAT, &version(0))
                .unwrap()
                .1
        );
    }

    #[test]
    fn files_the_cache_did_not_name_are_left_alone() {
        let engine = Engine::default();
        let dir = tempfile::tempdir().unwrap();
        let own = ["mine.cwasm", "notes.versions", "x.cwasm.sha256"];
        for name in own {
            std::fs::write(dir.path().join(name), b"operator's").unwrap();
        }
        let cache = ArtifactCache::new(dir.path().to_path_buf(), &engine, DEFAULT_MAX_BYTES);
        cache
            .component(&engine, Path::new("p.wasm"), WAT, &version(1))
            .unwrap();
        for name in own {
            assert!(dir.path().join(name).exists(), "{name} removed");
        }
    }

    #[test]
    fn a_symlink_in_the_folder_is_not_followed() {
        let engine = Engine::default();
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::new(dir.path().to_path_buf(), &engine, DEFAULT_MAX_BYTES);
        cache
            .component(&engine, Path::new("a.wasm"), WAT, &version(1))
            .unwrap();
        let real = only_artifact(dir.path());
        // Another version's name pointing at the first one's artifact and checksum: loading
        // it would run code compiled from other bytes.
        let planted = dir.path().join(cache.name(&version(2)));
        std::os::unix::fs::symlink(&real, &planted).unwrap();
        std::os::unix::fs::symlink(checksum_of(&real), checksum_of(&planted)).unwrap();
        assert!(
            !cache
                .component(&engine, Path::new("b.wasm"), WAT, &version(2))
                .unwrap()
                .1
        );
        assert!(
            !planted.is_symlink(),
            "the link was replaced by a real artifact"
        );
    }

    #[test]
    fn a_folder_under_one_others_can_write_is_not_used() {
        use std::os::unix::fs::PermissionsExt;
        let engine = Engine::default();
        let parent = tempfile::tempdir().unwrap();
        let shared = parent.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let dir = shared.join("cachet");
        let cache = ArtifactCache::new(dir.clone(), &engine, DEFAULT_MAX_BYTES);
        let load = || {
            cache
                .component(&engine, Path::new("p.wasm"), WAT, &version(1))
                .unwrap()
                .1
        };
        load();
        assert!(!load(), "a world-writable folder above is refused");
        // Sticky, as /tmp is: others cannot rename what is ours in it.
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        load();
        assert!(load());
    }
}
