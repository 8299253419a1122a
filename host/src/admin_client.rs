//! The `cachet status|reload|purge|promote|explain` subcommands: talk to a running cachet
//! through its admin listener and proxy listener, as named by its config.

use cachet::config::Config;
use std::time::Duration;

/// The request header that turns a PURGE into a soft purge (mark stale).
pub const SOFT_PURGE_HEADER: &str = "Cache-Purge-Soft";

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .redirects(0)
        .build()
}

fn with_token(request: ureq::Request, config: &Config) -> ureq::Request {
    match &config.server.admin_token {
        Some(token) => request.set("Authorization", &format!("Bearer {token}")),
        None => request,
    }
}

fn admin_url(config: &Config, path: &str) -> anyhow::Result<String> {
    let admin = config.server.admin.ok_or_else(|| {
        anyhow::anyhow!(
            "{}: no [server] admin listener configured",
            config.source.display()
        )
    })?;
    Ok(format!("http://{admin}{path}"))
}

/// Sends a request and returns the body, turning HTTP errors into messages.
fn call(request: ureq::Request) -> anyhow::Result<String> {
    match request.call() {
        Ok(resp) => Ok(resp.into_string()?),
        Err(ureq::Error::Status(code, resp)) => {
            let body = resp.into_string().unwrap_or_default();
            anyhow::bail!("HTTP {code}: {}", body.trim())
        }
        Err(e) => anyhow::bail!("{e}"),
    }
}

/// `GET /status`, pretty-printed for people, or raw JSON.
pub fn status(config: &Config, json: bool) -> anyhow::Result<()> {
    let body = call(with_token(
        agent().get(&admin_url(config, "/status")?),
        config,
    ))?;
    if json {
        println!("{body}");
        return Ok(());
    }
    let status: serde_json::Value = serde_json::from_str(&body)?;
    print_status(&status);
    Ok(())
}

fn print_status(status: &serde_json::Value) {
    let cache = &status["cache"];
    println!(
        "cache: {} of {} bytes, {} objects, {} evictions",
        cache["stored_bytes"], cache["budget_bytes"], cache["objects"], cache["evictions"]
    );
    if let Some(refusal) = status["config"]["last_refusal"].as_object() {
        println!(
            "config: last change refused: {}",
            refusal.get("reason").unwrap_or(&serde_json::Value::Null)
        );
    }
    let waiting: Vec<&str> = status["config"]["waiting_for_restart"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|key| key.as_str())
        .collect();
    if !waiting.is_empty() {
        println!(
            "config: changed keys wait for a restart (running values stay): {}",
            waiting.join(", ")
        );
    }
    for tenant in status["tenants"].as_array().into_iter().flatten() {
        let plugin = &tenant["plugin"];
        let name = plugin["path"]
            .as_str()
            .or(plugin["builtin"].as_str())
            .unwrap_or("?");
        let sha = plugin["sha256"]
            .as_str()
            .map_or("-", |s| &s[..s.len().min(12)]);
        println!(
            "tenant {}: hosts {} -> {}; plugin {name} sha256 {sha}… generation {}",
            tenant["name"].as_str().unwrap_or("?"),
            tenant["hosts"],
            tenant["upstream"].as_str().unwrap_or("?"),
            plugin["generation"]
        );
        if let Some(refusal) = plugin["last_refusal"].as_object() {
            println!(
                "  last refused version: {}",
                refusal.get("reason").unwrap_or(&serde_json::Value::Null)
            );
        }
        if tenant["promoted"].as_bool() == Some(true) {
            println!("  live plugin is the promoted shadow");
        }
        print_shadow(&tenant["shadow"]);
    }
    print_certificates(&status["tls"]);
}

/// The TLS listener's certificates: names, expiry, and a refused reload if any.
fn print_certificates(tls: &serde_json::Value) {
    for cert in tls["certificates"].as_array().into_iter().flatten() {
        let names: Vec<&str> = cert["names"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str())
            .collect();
        println!(
            "certificate {}: {} (not after {}{})",
            cert["certificate"].as_str().unwrap_or("?"),
            names.join(" "),
            cert["not_after"],
            if cert["expired"].as_bool() == Some(true) {
                ", EXPIRED"
            } else {
                ""
            }
        );
        if let Some(refusal) = cert["last_refusal"].as_object() {
            println!(
                "  last refused version: {}",
                refusal.get("reason").unwrap_or(&serde_json::Value::Null)
            );
        }
    }
}

/// The shadow plugin's comparisons: counts per hook, then the recent disagreements.
fn print_shadow(shadow: &serde_json::Value) {
    if shadow.is_null() {
        return;
    }
    println!(
        "  shadow {} sha256 {}… sample {}",
        shadow["path"].as_str().unwrap_or("?"),
        shadow["sha256"]
            .as_str()
            .map_or("-", |s| &s[..s.len().min(12)]),
        shadow["sample"]
    );
    for (hook, counts) in shadow["hooks"].as_object().into_iter().flatten() {
        println!(
            "    {hook}: {} agree, {} disagree, {} fault",
            counts["agree"], counts["disagree"], counts["fault"]
        );
    }
    for d in shadow["recent_disagreements"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let text = |k: &str| d[k].as_str().unwrap_or("").to_owned();
        // The client's host and path as sent: controls and bidi overrides escaped, so a
        // request cannot disguise how the record shows on an operator's terminal.
        let client_text =
            |k: &str| cachet::one_line::one_line(d[k].as_str().unwrap_or("")).into_owned();
        println!(
            "    {} {} {} {}{}: live {} | shadow {}",
            text("hook"),
            text("result"),
            text("method"),
            client_text("host"),
            client_text("path"),
            text("live"),
            text("shadow")
        );
    }
}

/// `POST /promote?tenant=NAME[&sha256=HEX]`: the shadow goes live (only if it is still the
/// version `sha256` names, when given); prints the status after.
pub fn promote(config: &Config, tenant: &str, sha256: Option<&str>) -> anyhow::Result<()> {
    let mut url = url_with_tenant(&admin_url(config, "/promote")?, tenant);
    if let Some(sha256) = sha256 {
        anyhow::ensure!(
            cachet::admin::is_sha256_prefix(sha256),
            "--sha256 takes the shadow plugin's sha256 in hex, at least the 12 digits cachet \
             status shows"
        );
        url.push_str("&sha256=");
        url.push_str(sha256);
    }
    let body = call(with_token(agent().post(&url), config))?;
    let status: serde_json::Value = serde_json::from_str(&body)?;
    println!("promoted the shadow plugin of tenant {tenant}");
    print_status(&status);
    Ok(())
}

fn url_with_tenant(base: &str, tenant: &str) -> String {
    let escaped: String = tenant
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("{base}?tenant={escaped}")
}

/// `POST /explain`: the running cachet dry-runs the request; prints each step.
pub fn explain(config: &Config, url: &str, headers: &[String], json: bool) -> anyhow::Result<()> {
    let query = serde_json::json!({ "url": url, "headers": headers });
    let request = with_token(agent().post(&admin_url(config, "/explain")?), config)
        .set("Content-Type", "application/json");
    let body = match request.send_string(&query.to_string()) {
        Ok(resp) => resp.into_string()?,
        Err(ureq::Error::Status(code, resp)) => {
            let body = resp.into_string().unwrap_or_default();
            anyhow::bail!("HTTP {code}: {}", body.trim())
        }
        Err(e) => anyhow::bail!("{e}"),
    };
    if json {
        println!("{body}");
        return Ok(());
    }
    let doc: serde_json::Value = serde_json::from_str(&body)?;
    println!("request: GET {url}");
    for step in doc["steps"].as_array().into_iter().flatten() {
        println!(
            "{:<11} {}",
            format!("{}:", step["step"].as_str().unwrap_or("?")),
            step["detail"].as_str().unwrap_or("")
        );
    }
    if let Some(verdict) = doc["verdict"].as_str() {
        println!("result:     {verdict}");
    }
    println!("(dry run: nothing was sent to the origin, nothing stored)");
    Ok(())
}

/// `POST /reload`: check the config and every plugin now.
pub fn reload(config: &Config) -> anyhow::Result<()> {
    let body = call(with_token(
        agent().post(&admin_url(config, "/reload")?),
        config,
    ))?;
    let status: serde_json::Value = serde_json::from_str(&body)?;
    print_status(&status);
    Ok(())
}

/// What `cachet purge` removes.
pub struct PurgeRequest<'a> {
    /// The URL as clients request it, e.g. `http://www.example.com/a.css`; with tags, names
    /// the tenant whose tagged entries go. None: tags are purged in every tenant.
    pub url: Option<&'a str>,
    /// Mark stale instead of removing (served stale while revalidating).
    pub soft: bool,
    /// Purge every entry carrying any of these surrogate keys instead.
    pub tags: &'a [String],
}

/// Sends `PURGE` for a URL (or tags of its tenant) to the proxy listener with the token, or
/// asks the admin listener to purge tags in every tenant when there is no URL.
pub fn purge(config: &Config, purge: &PurgeRequest<'_>) -> anyhow::Result<()> {
    let mut request = match purge.url {
        Some(url) => proxy_purge(config, url)?,
        None if !purge.tags.is_empty() => agent().post(&admin_url(config, "/purge")?),
        None => anyhow::bail!("give a URL to purge, or --tag KEY"),
    };
    request = with_token(request, config);
    if purge.soft {
        request = request.set(SOFT_PURGE_HEADER, "1");
    }
    if !purge.tags.is_empty() {
        request = request.set("Surrogate-Key", &purge.tags.join(" "));
    }
    let body = call(request)?;
    println!("{}", body.trim());
    Ok(())
}

/// `PURGE` on the proxy listener, routed to the URL's tenant by its Host.
fn proxy_purge(config: &Config, url: &str) -> anyhow::Result<ureq::Request> {
    let uri: http::Uri = url.parse()?;
    let host = uri
        .authority()
        .ok_or_else(|| anyhow::anyhow!("{url}: give an absolute URL (http://host/path)"))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let target = format!("http://{}{path}", config.server.listen);
    Ok(agent().request("PURGE", &target).set("Host", host.as_str()))
}
