//! A real HTTP client (ureq) that reports any status as a response.

use std::time::Duration;

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        super::find_header(&self.headers, name)
    }

    /// The `Cache-Status` header, or "" when absent.
    pub fn cache_status(&self) -> &str {
        self.header("cache-status").unwrap_or("")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(20))
        .redirects(0)
        .build()
}

/// Sends `method url` with `headers` and returns whatever came back.
pub fn send(method: &str, url: &str, headers: &[(&str, &str)]) -> Resp {
    try_send(method, url, headers).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`send`], with transport errors returned instead of panicking.
pub fn try_send(method: &str, url: &str, headers: &[(&str, &str)]) -> Result<Resp, String> {
    let mut request = agent().request(method, url);
    for (name, value) in headers {
        request = request.set(name, value);
    }
    let response = match request.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(format!("{method} {url}: {e}")),
    };
    let status = response.status();
    let headers = response
        .headers_names()
        .into_iter()
        .flat_map(|name| {
            response
                .all(&name)
                .into_iter()
                .map(|v| (name.clone(), v.to_owned()))
                .collect::<Vec<_>>()
        })
        .collect();
    let mut body = Vec::new();
    if method != "HEAD" {
        use std::io::Read;
        response
            .into_reader()
            .take(64 << 20)
            .read_to_end(&mut body)
            .map_err(|e| format!("{method} {url}: reading body: {e}"))?;
    }
    Ok(Resp {
        status,
        headers,
        body,
    })
}

pub fn get(url: &str) -> Resp {
    send("GET", url, &[])
}
