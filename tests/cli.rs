//! The command line: `cachet check` and config errors, run as a user would.

mod support;

use support::plugin;
use support::proxy::run_cachet;

fn run(args: &[&str]) -> (bool, String) {
    run_cachet(args)
}

#[test]
fn check_reports_exports_and_imports_of_a_good_plugin() {
    let path = plugin("standard");
    let (ok, out) = run(&["check", path.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("on-request"), "{out}");
    assert!(out.contains("cache-key"), "{out}");
    assert!(out.contains("on-response"), "{out}");
    assert!(out.contains("on-deliver"), "{out}");
    assert!(out.contains("contract: cachet:policy@0.3.0"), "{out}");
    assert!(out.contains("cachet:policy/types@0.3.0"), "{out}");
}

#[test]
fn check_refuses_garbage_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.wasm");
    std::fs::write(&bad, b"this is not wasm").unwrap();
    let (ok, out) = run(&["check", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(out.contains("not a valid WebAssembly component"), "{out}");
    assert!(out.contains("bad.wasm"), "{out}");
}

/// A module wit-component asserts on (an export under both naming styles) is refused in one
/// line: the panic the refusal is made of used to print its `panicked at` report first.
#[test]
fn check_refuses_a_module_wit_component_panics_on_in_one_line() {
    let mut module = wat::parse_str(
        r#"(module
            (memory (export "memory") 1)
            (func $f)
            (export "f" (func $f))
            (export "cm32p2||f" (func $f)))"#,
    )
    .unwrap();
    let mut resolve = wit_parser::Resolve::default();
    let package = resolve
        .push_str(
            "w.wit",
            "package test:twice;\nworld w {\n  export f: func();\n}\n",
        )
        .unwrap();
    let world = resolve.select_world(&[package], Some("w")).unwrap();
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let twice = dir.path().join("twice.wasm");
    std::fs::write(&twice, module).unwrap();
    let (ok, out) = run(&["check", twice.to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(out.contains("cannot turn"), "{out}");
    assert!(!out.contains("panicked"), "{out}");
}

#[test]
fn check_refuses_a_truncated_plugin() {
    let bytes = std::fs::read(plugin("standard")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.wasm");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let (ok, out) = run(&["check", cut.to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(out.contains("cut.wasm"), "{out}");
}

#[test]
fn a_malformed_config_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[cache]\nmax_bytes = \"lots\"\n",
    )
    .unwrap();
    let (ok, out) = run(&["serve", "--config", config.to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(out.contains("bad.toml:5"), "{out}");
    assert!(out.contains("max_bytes"), "{out}");
}

/// A table without a field it needs is reported at its header: the key is named there too
/// (it was left out with the quoted values, as if the field's name were a secret).
#[test]
fn a_tenant_without_a_required_field_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tenant.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[[tenant]]\nname = \"site\"\nupstream = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let (ok, out) = run(&["validate", "--config", config.to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(out.contains("tenant.toml:4"), "{out}");
    assert!(out.contains("key `tenant.hosts`"), "{out}");
    assert!(out.contains("missing field `hosts`"), "{out}");
}

#[test]
fn a_disk_tier_capped_below_its_minimum_of_objects_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tiers.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[cache.disk]\npath = \"disk\"\nmax_objects = 10\n",
    )
    .unwrap();
    let (ok, out) = run(&["serve", "--config", config.to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(out.contains("tiers.toml:6"), "{out}");
    assert!(out.contains("cache.disk.max_objects"), "{out}");
    assert!(!dir.path().join("disk").exists(), "nothing was created");
}

#[test]
fn a_purge_backlog_of_nothing_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tiers.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[cache.shared]\nurl = \"redis://127.0.0.1:1\"\npurge_backlog = 0\n",
    )
    .unwrap();
    let (ok, out) = run(&["serve", "--config", config.to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(out.contains("tiers.toml:6"), "{out}");
    assert!(out.contains("cache.shared.purge_backlog"), "{out}");
    assert!(out.contains("between 1 and 1000000"), "{out}");
}

#[test]
fn a_host_pattern_that_is_no_name_wildcard_or_catch_all_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cachet.toml");
    let plugin = plugin("standard");
    for pattern in ["*shop.test", "shop.test:8080", "*.*.test"] {
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n\n[[tenant]]\nname = \"x\"\nhosts = [{pattern:?}]\nupstream = \"127.0.0.1:9\"\nplugin = {:?}\n",
                plugin.display().to_string()
            ),
        )
        .unwrap();
        let (ok, out) = run(&["validate", "--config", config.to_str().unwrap()]);
        assert!(!ok, "{pattern}: {out}");
        assert!(out.contains("cachet.toml:6"), "{out}");
        assert!(out.contains("tenant.hosts"), "{out}");
    }
}

#[test]
fn a_config_with_a_bad_upstream_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cachet.toml");
    let plugin = plugin("standard");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[[tenant]]\nname = \"x\"\nhosts = [\"*\"]\nupstream = \"nowhere\"\nplugin = {:?}\n",
            plugin.display().to_string()
        ),
    )
    .unwrap();
    let (ok, out) = run(&["serve", "--config", config.to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(out.contains("cachet.toml:7"), "{out}");
    assert!(out.contains("tenant.upstream"), "{out}");
}

#[test]
fn serve_refuses_a_config_whose_plugin_is_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.wasm");
    std::fs::write(&bad, b"\0asm garbage").unwrap();
    let config = dir.path().join("cachet.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[[tenant]]\nname = \"x\"\nhosts = [\"*\"]\nupstream = \"127.0.0.1:9\"\nplugin = \"broken.wasm\"\n",
    )
    .unwrap();
    let config_arg = config.to_str().unwrap();
    for command in ["serve", "validate"] {
        let (ok, out) = run(&[command, "--config", config_arg]);
        assert!(!ok, "{command}: {out}");
        assert!(out.contains("broken.wasm"), "{command}: {out}");
        // Found only when the file is loaded, yet named like any config error.
        assert!(
            out.contains("cachet.toml:8: key `tenant.plugin`: tenant \"x\": plugin refused"),
            "{command}: {out}"
        );
    }

    // A shadow plugin's refusal names its own key and line.
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[[tenant]]\nname = \"x\"\nhosts = [\"*\"]\nupstream = \"127.0.0.1:9\"\nplugin = \"builtin:standard\"\nshadow_plugin = \"broken.wasm\"\n",
    )
    .unwrap();
    let (ok, out) = run(&["validate", "--config", config_arg]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(
            "cachet.toml:9: key `tenant.shadow_plugin`: tenant \"x\": shadow plugin refused"
        ),
        "{out}"
    );
}

#[test]
fn durations_take_units_and_the_old_ms_keys_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cachet.toml");
    let plugin = plugin("standard");
    let write = |cache: &str, limits: &str| {
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"1.5s\"\n\n[cache]\n{cache}\n\n[[tenant]]\nname = \"x\"\nhosts = [\"*\"]\nupstream = \"127.0.0.1:1\"\nplugin = {:?}\n\n[tenant.limits]\n{limits}\n",
                plugin.display().to_string()
            ),
        )
        .unwrap();
        run(&["validate", "--config", config.to_str().unwrap()])
    };
    let (ok, out) = write("lock_timeout = \"2s\"", "hook_timeout = \"250ms\"");
    assert!(ok, "{out}");
    let (ok, out) = write("lock_timeout_ms = 2000", "hook_timeout_ms = 250");
    assert!(ok, "{out}");

    // A number without a unit, a unit cachet does not know, both forms of
    // one key, a zero hook deadline: each named by file, line and key.
    let (ok, out) = write("lock_timeout = 5", "");
    assert!(!ok, "{out}");
    assert!(out.contains("cachet.toml:6"), "{out}");
    assert!(out.contains("cache.lock_timeout"), "{out}");
    assert!(out.contains("has no unit"), "{out}");
    let (ok, out) = write("", "hook_timeout = \"10 parsecs\"");
    assert!(!ok, "{out}");
    assert!(out.contains("cachet.toml:15"), "{out}");
    assert!(out.contains("tenant.limits.hook_timeout"), "{out}");
    let (ok, out) = write("", "hook_timeout = \"10ms\"\nhook_timeout_ms = 10");
    assert!(!ok, "{out}");
    assert!(out.contains("cachet.toml:16"), "{out}");
    assert!(out.contains("hook_timeout_ms"), "{out}");
    assert!(out.contains("not both"), "{out}");
    let (ok, out) = write("", "hook_timeout = \"0ms\"");
    assert!(!ok, "{out}");
    assert!(out.contains("at least 1ms"), "{out}");
    // The old integer key is named as written.
    let (ok, out) = write("", "hook_timeout_ms = 0");
    assert!(!ok, "{out}");
    assert!(out.contains("`tenant.limits.hook_timeout_ms`"), "{out}");
}

#[test]
fn heavy_call_is_a_duration_above_zero_and_at_most_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cachet.toml");
    let validate = |heavy_call: &str| {
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n\n[plugins]\nheavy_call = {heavy_call}\n\n[[tenant]]\nname = \"x\"\nhosts = [\"*\"]\nupstream = \"127.0.0.1:1\"\nplugin = \"builtin:standard\"\n"
            ),
        )
        .unwrap();
        run(&["validate", "--config", config.to_str().unwrap()])
    };
    let (ok, out) = validate("\"250us\"");
    assert!(ok, "{out}");
    for (value, says) in [
        ("\"0us\"", "more than 0"),
        ("\"2s\"", "at most 1s"),
        ("100", "has no unit"),
    ] {
        let (ok, out) = validate(value);
        assert!(!ok, "{value}: {out}");
        assert!(
            out.contains("cachet.toml:5")
                && out.contains("plugins.heavy_call")
                && out.contains(says),
            "{value}: {out}"
        );
    }
}

#[test]
fn client_timeouts_are_durations_above_zero() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cachet.toml");
    let plugin = plugin("standard");
    for key in ["request_head_timeout", "client_write_timeout"] {
        let validate = |timeout: &str| {
            std::fs::write(
                &config,
                format!(
                    "[server]\nlisten = \"127.0.0.1:0\"\n{key} = {timeout}\n\n[[tenant]]\nname = \"x\"\nhosts = [\"*\"]\nupstream = \"127.0.0.1:1\"\nplugin = {:?}\n",
                    plugin.display().to_string()
                ),
            )
            .unwrap();
            run(&["validate", "--config", config.to_str().unwrap()])
        };
        let (ok, out) = validate("\"10s\"");
        assert!(ok, "{key}: {out}");
        for (value, says) in [
            ("\"0s\"", "more than 0"),
            ("\"2h\"", "at most 1h"),
            ("10", "has no unit"),
        ] {
            let (ok, out) = validate(value);
            assert!(!ok, "{key} {value}: {out}");
            assert!(out.contains("cachet.toml:3"), "{key} {value}: {out}");
            assert!(
                out.contains(&format!("server.{key}")),
                "{key} {value}: {out}"
            );
            assert!(out.contains(says), "{key} {value}: {out}");
        }
    }
}

#[test]
fn sizes_ports_and_mistyped_values_are_refused_with_the_full_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cachet.toml");
    let plugin = plugin("standard");
    let write = |cache: &str, upstream: &str, limits: &str| {
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n\n[cache]\n{cache}\n\n[[tenant]]\nname = \"x\"\nhosts = [\"*\"]\nupstream = {upstream:?}\nplugin = {:?}\n\n[tenant.limits]\n{limits}\n",
                plugin.display().to_string()
            ),
        )
        .unwrap();
        run(&["validate", "--config", config.to_str().unwrap()])
    };
    let (ok, out) = write("max_bytes = \"64MiB\"", "127.0.0.1:1", "");
    assert!(ok, "{out}");

    // Each named by file, line and its key in full.
    let refused = [
        (
            "max_bytes = \"10QB\"",
            "127.0.0.1:1",
            "",
            5,
            "cache.max_bytes",
            "is not a size",
        ),
        (
            "max_bytes = \"-5MiB\"",
            "127.0.0.1:1",
            "",
            5,
            "cache.max_bytes",
            "is not a size",
        ),
        (
            "max_bytes = \"99999999999999999999GiB\"",
            "127.0.0.1:1",
            "",
            5,
            "cache.max_bytes",
            "too large",
        ),
        (
            "max_bytes = true",
            "127.0.0.1:1",
            "",
            5,
            "cache.max_bytes",
            "a size",
        ),
        (
            "",
            "127.0.0.1:99999",
            "",
            10,
            "tenant.upstream",
            "between 1 and 65535",
        ),
        (
            "",
            "127.0.0.1:0",
            "",
            10,
            "tenant.upstream",
            "between 1 and 65535",
        ),
        (
            "max_object_bytes = \"1MiB\"",
            "127.0.0.1:1",
            "max_object_bytes = \"2MiB\"",
            14,
            "tenant.limits.max_object_bytes",
            "must not exceed cache.max_object_bytes",
        ),
        (
            "",
            "127.0.0.1:1",
            "max_key_parts = 0",
            14,
            "tenant.limits.max_key_parts",
            "at least 1",
        ),
        (
            "",
            "127.0.0.1:1",
            "max_key_bytes = 0",
            14,
            "tenant.limits.max_key_bytes",
            "at least 1",
        ),
        (
            "",
            "127.0.0.1:1",
            "[tenant.origin]\nread_timeout = \"0.0001ms\"",
            15,
            "tenant.origin.read_timeout",
            "at least 1ms",
        ),
        (
            "",
            "127.0.0.1:1",
            "[tenant.origin]\nmax_connections = 0",
            15,
            "tenant.origin.max_connections",
            "between 1 and",
        ),
        // The old millisecond form is bounded as the text form is.
        (
            "",
            "127.0.0.1:1",
            "hook_timeout_ms = 1000000000000",
            14,
            "tenant.limits.hook_timeout_ms",
            "maximum of 7 days",
        ),
    ];
    for (cache, upstream, limits, line, key, why) in refused {
        let (ok, out) = write(cache, upstream, limits);
        assert!(!ok, "{cache} {upstream} {limits}: {out}");
        assert!(out.contains(&format!("cachet.toml:{line}")), "{out}");
        assert!(out.contains(&format!("`{key}`")), "{out}");
        assert!(out.contains(why), "{out}");
    }
    // A host of dots is refused, not read as another: `"*."` had become the catch-all `"*"`.
    for hosts in ["\"*.\"", "\"shop.test..\""] {
        let (ok, _) = write("", "127.0.0.1:1", "");
        assert!(ok);
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(
            &config,
            text.replace("hosts = [\"*\"]", &format!("hosts = [{hosts}]")),
        )
        .unwrap();
        let (ok, out) = run(&["validate", "--config", config.to_str().unwrap()]);
        assert!(!ok, "{hosts}: {out}");
        assert!(out.contains("`tenant.hosts`"), "{out}");
    }
    // Limits the plugin cannot start within would fault every request: refused at load.
    let (ok, out) = write("", "127.0.0.1:1", "memory = \"1KiB\"");
    assert!(!ok, "{out}");
    assert!(out.contains("cannot start within"), "{out}");
    assert!(out.contains("memory limit"), "{out}");
}

/// A taken port is an error at start, with the address and its key: Pingora would retry for
/// half a minute and then run on without the listener, looking healthy to a supervisor.
#[test]
fn serve_exits_at_once_when_an_address_it_listens_on_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cachet.toml");
    let plugin = plugin("standard");
    let free = support::free_port();
    // An address named twice is refused with the config, before any bind.
    for (listen, admin, key, why) in [
        (port, free, "server.listen", "cannot listen on"),
        (free, port, "server.admin", "cannot listen on"),
        (free, free, "server.admin", "is also server.listen"),
    ] {
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:{listen}\"\nadmin = \"127.0.0.1:{admin}\"\n\n[[tenant]]\nname = \"x\"\nhosts = [\"*\"]\nupstream = \"127.0.0.1:1\"\nplugin = {:?}\n",
                plugin.display().to_string()
            ),
        )
        .unwrap();
        let started = std::time::Instant::now();
        let mut child = std::process::Command::new(support::proxy::cachet_bin())
            .args(["serve", "--config", config.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > std::time::Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{key}: still running 10 s after start with the address taken");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert!(!status.success(), "{key}: {err}");
        assert!(err.contains(why), "{key}: {err}");
        assert!(err.contains(key), "{key}: {err}");
    }
    drop(taken);
}

#[test]
fn validate_refuses_a_disk_tier_path_under_a_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("afile"), b"x").unwrap();
    let config = dir.path().join("cachet.toml");
    for (path, ok) in [("afile/disk", false), ("afile", false), ("new/disk", true)] {
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n\n[cache.disk]\npath = {path:?}\n\n[[tenant]]\nname = \"x\"\nhosts = [\"*\"]\nupstream = \"127.0.0.1:1\"\nplugin = \"builtin:standard\"\n"
            ),
        )
        .unwrap();
        let (valid, out) = run(&["validate", "--config", config.to_str().unwrap()]);
        assert_eq!(valid, ok, "{path}: {out}");
        if !ok {
            assert!(out.contains("cachet.toml:5"), "{out}");
            assert!(out.contains("cache.disk.path"), "{out}");
            assert!(out.contains("is not a folder"), "{out}");
        }
    }
    assert!(!dir.path().join("new").exists(), "validate creates nothing");
}

#[test]
fn a_blank_admin_token_is_refused_and_a_short_one_warned_of() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cachet.toml");
    let validate = |server: &str| {
        std::fs::write(
            &config,
            format!("[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"0.0.0.0:0\"\n{server}\n\n[[tenant]]\nname = \"x\"\nhosts = [\"*\"]\nupstream = \"127.0.0.1:1\"\nplugin = \"builtin:standard\"\n"),
        )
        .unwrap();
        run(&["validate", "--config", config.to_str().unwrap()])
    };
    let (ok, out) = validate("admin_token = \"\"");
    assert!(!ok, "{out}");
    assert!(out.contains("server.admin_token"), "{out}");
    assert!(out.contains("blank"), "{out}");
    assert!(
        out.contains("cachet.toml:4: key `server.admin_token`"),
        "{out}"
    );
    // Tokens no client can send (header values are trimmed and end at a line) lock
    // everyone out; a line break also printed the token in the CLI's error.
    for token in ["\"  \"", "\"tok \"", "\"a\\nb\"", "\"a b\""] {
        let (ok, out) = validate(&format!("admin_token = {token}"));
        assert!(!ok, "{token}: {out}");
        assert!(out.contains("server.admin_token"), "{token}: {out}");
    }
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "first\nsecond\n").unwrap();
    let (ok, out) = validate("admin_token_file = \"token\"");
    assert!(!ok, "{out}");
    assert!(out.contains("server.admin_token_file"), "{out}");
    assert!(out.contains("line breaks"), "{out}");
    std::fs::write(&token_file, "s3cret-Token_1\n").unwrap();
    let (ok, out) = validate("admin_token_file = \"token\"");
    assert!(ok, "{out}");
    // Valid but short enough to find by trying: a warning names the key and the length.
    assert!(
        out.contains("warning") && out.contains("server.admin_token_file"),
        "{out}"
    );
    assert!(out.contains("14 characters"), "{out}");
    assert!(!out.contains("s3cret"), "the token is repeated: {out}");
    let (ok, out) = validate("admin_token = \"0123456789abcdef\"");
    assert!(ok && !out.contains("warning"), "{out}");
}

/// `validate` catches what `serve` could not start with: two listeners on one address
/// (or one on all interfaces and one on a single one, same port), and a per-tenant table
/// sized beyond any memory (`uncacheable_keys`).
#[test]
fn listeners_on_one_address_and_unbounded_tables_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cachet.toml");
    let validate = |server: &str, cache: &str| {
        std::fs::write(
            &config,
            format!("[server]\n{server}\n\n[cache]\n{cache}\n\n[[tenant]]\nname = \"x\"\nhosts = [\"*\"]\nupstream = \"127.0.0.1:1\"\nplugin = \"builtin:standard\"\n"),
        )
        .unwrap();
        run(&["validate", "--config", config.to_str().unwrap()])
    };
    for (server, key) in [
        (
            "listen = \"127.0.0.1:18080\"\nadmin = \"127.0.0.1:18080\"",
            "server.admin",
        ),
        (
            "listen = \"0.0.0.0:18080\"\nmetrics = \"127.0.0.1:18080\"",
            "server.metrics",
        ),
    ] {
        let (ok, out) = validate(server, "");
        assert!(!ok, "{server}: {out}");
        assert!(
            out.contains(&format!("cachet.toml:3: key `{key}`")),
            "names the second listener's line: {out}"
        );
        assert!(
            out.contains(key) && out.contains("18080"),
            "{server}: {out}"
        );
    }
    let (ok, out) = validate(
        "listen = \"127.0.0.1:18080\"\nadmin = \"127.0.0.1:18081\"",
        "",
    );
    assert!(ok, "{out}");
    let (ok, out) = validate("listen = \"127.0.0.1:0\"", "uncacheable_keys = 1000000000");
    assert!(!ok, "{out}");
    assert!(out.contains("cache.uncacheable_keys"), "{out}");
    let (ok, out) = validate("listen = \"127.0.0.1:0\"", "uncacheable_keys = 100000");
    assert!(ok, "{out}");
}

/// A lock timeout of 0 (no miss would wait for the fill) is refused like the other timeouts;
/// an upstream with a user and password is refused without repeating the password; a tenant
/// quota above the whole cache passes with a warning (it never limits anything).
#[test]
fn settings_that_do_nothing_or_leak_a_secret_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cachet.toml");
    let validate = |cache: &str, tenant: &str| {
        std::fs::write(
            &config,
            format!("[server]\nlisten = \"127.0.0.1:0\"\n\n[cache]\nmax_bytes = \"1MiB\"\n{cache}\n\n[[tenant]]\nname = \"x\"\nhosts = [\"*\"]\nplugin = \"builtin:standard\"\n{tenant}\n"),
        )
        .unwrap();
        run(&["validate", "--config", config.to_str().unwrap()])
    };
    let upstream = "upstream = \"127.0.0.1:1\"";
    for (cache, key) in [
        ("lock_timeout = \"0s\"", "cache.lock_timeout"),
        ("lock_timeout_ms = 0", "cache.lock_timeout_ms"),
    ] {
        let (ok, out) = validate(cache, upstream);
        assert!(!ok, "{cache}: {out}");
        assert!(
            out.contains(key) && out.contains("at least 1ms"),
            "{cache}: {out}"
        );
    }
    let (ok, out) = validate("lock_timeout = \"1ms\"", upstream);
    assert!(ok, "{out}");

    let (ok, out) = validate("", "upstream = \"http://admin:s3cret@127.0.0.1:1\"");
    assert!(!ok, "{out}");
    assert!(
        out.contains("tenant.upstream") && out.contains("user or password"),
        "{out}"
    );
    assert!(!out.contains("s3cret"), "the password is repeated: {out}");
    // So is a Redis URL refused for its form: a `#` in the password, a mistyped scheme.
    for url in [
        "redis://:Tr0ub#d0r@127.0.0.1:6379",
        "Redis://:Tr0ub@d0r@127.0.0.1:6379/0",
    ] {
        let (ok, out) = validate(&format!("[cache.shared]\nurl = {url:?}"), upstream);
        assert!(!ok, "{url}: {out}");
        assert!(out.contains("cache.shared.url"), "{url}: {out}");
        assert!(!out.contains("Tr0ub"), "the password is repeated: {out}");
    }
    // A secret of the wrong type: serde's message quotes the value it refused.
    let (ok, out) = validate(
        "[cache.shared]\nurl = \"redis://127.0.0.1:6379\"\npassword = 84120001",
        upstream,
    );
    assert!(!ok && out.contains("cache.shared.password"), "{out}");
    assert!(out.contains("invalid type: integer, expected"), "{out}");
    assert!(!out.contains("84120001"), "the password is repeated: {out}");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_token = 84120002\n",
    )
    .unwrap();
    let (ok, out) = run(&["validate", "--config", config.to_str().unwrap()]);
    assert!(!ok && out.contains("server.admin_token"), "{out}");
    assert!(!out.contains("84120002"), "the token is repeated: {out}");
    // Written as an inline table or under a quoted key, the secret was repeated: the key
    // read from the line was `server`, `cache.shared` or `server."admin_token"`.
    for written in [
        "server = { listen = \"127.0.0.1:0\", admin_token = 84120003 }\n",
        "[server]\nlisten = \"127.0.0.1:0\"\n\"admin_token\" = 84120003\n",
        "[server]\nlisten = \"127.0.0.1:0\"\n[cache]\nshared = { url = \"redis://127.0.0.1:6379\", password = 84120003 }\n",
    ] {
        std::fs::write(&config, written).unwrap();
        let (ok, out) = run(&["validate", "--config", config.to_str().unwrap()]);
        assert!(!ok && out.contains("invalid type"), "{written}: {out}");
        assert!(!out.contains("84120003"), "the secret is repeated: {out}");
    }
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\n\"admin_token\" = 84120004\n",
    )
    .unwrap();
    let (_, out) = run(&["validate", "--config", config.to_str().unwrap()]);
    assert!(out.contains("key `server.admin_token`"), "{out}");

    let (ok, out) = validate(
        "",
        &format!("{upstream}\n[tenant.limits]\ncache_quota = \"2MiB\""),
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("warning") && out.contains("cache_quota") && out.contains("never limits"),
        "{out}"
    );
    let (ok, out) = validate(
        "",
        &format!("{upstream}\n[tenant.limits]\ncache_quota = \"512KiB\""),
    );
    assert!(ok && !out.contains("warning"), "{out}");
}

/// Values that would pass unnoticed and misbehave later are refused with their key: a
/// thread count no machine starts, an upstream listed twice (twice its share) or under two
/// names on one address (one upstream, the second name never used), a health path
/// that is not a request path. `tls_verify = false` passes with a warning.
#[test]
fn pool_and_thread_values_that_would_misbehave_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cachet.toml");
    let plugin = plugin("standard").display().to_string();
    let validate = |server: &str, tenant: &str| {
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n{server}\n\n[[tenant]]\nname = \"x\"\nhosts = [\"*\"]\nplugin = {plugin:?}\n{tenant}\n"
            ),
        )
        .unwrap();
        run(&["validate", "--config", config.to_str().unwrap()])
    };
    let pool = "upstreams = [\"127.0.0.1:1\", \"127.0.0.1:2\"]";
    let (ok, out) = validate("threads = 4", pool);
    assert!(ok, "{out}");
    for (server, tenant, key, why) in [
        ("threads = 100000", pool, "server.threads", "at most 1024"),
        (
            "",
            "upstreams = [\"127.0.0.1:1\", \"127.0.0.1:1\"]",
            "tenant.upstreams",
            "listed twice",
        ),
        (
            "",
            "upstreams = [\"localhost:1\", \"127.0.0.1:1\"]",
            "tenant.upstreams",
            "both resolve to 127.0.0.1:1",
        ),
        (
            "",
            "upstreams = [\"127.0.0.1:1\"]\n[tenant.pool]\nhealth_path = \"/h z\"",
            "tenant.pool.health_path",
            "not a request path",
        ),
        (
            "",
            "upstreams = [\"127.0.0.1:1\"]\n[tenant.pool]\nhealth_host = \"shop.example/x\"",
            "tenant.pool.health_host",
            "not a host name",
        ),
    ] {
        let (ok, out) = validate(server, tenant);
        assert!(!ok, "{server} {tenant}: {out}");
        assert!(out.contains(&format!("`{key}`")), "{out}");
        assert!(out.contains(why), "{out}");
    }
    let (ok, out) = validate("", "upstream = \"https://127.0.0.1:1\"\ntls_verify = false");
    assert!(ok, "{out}");
    assert!(
        out.contains("warning") && out.contains("tls_verify = false"),
        "{out}"
    );
}
