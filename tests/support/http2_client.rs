//! A real HTTP/2 client (the `h2` crate): cleartext with prior knowledge
//! (h2c) or over TLS with ALPN `h2`. Each call opens one connection, sends
//! its requests one after the other as streams on it, and closes it.

use super::client::Resp;
use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// One request: method, path, extra headers, and a body sent in a DATA frame (no length
/// field unless the headers carry one).
pub struct H2Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: Option<&'a [u8]>,
}

impl<'a> H2Request<'a> {
    pub fn get(path: &'a str) -> Self {
        Self {
            method: "GET",
            path,
            headers: &[],
            body: None,
        }
    }
}

/// What one HTTP/2 connection showed.
pub struct H2Outcome {
    /// The protocol ALPN settled on (TLS only).
    pub alpn: Option<Vec<u8>>,
    /// SETTINGS_MAX_CONCURRENT_STREAMS the server announced.
    pub peer_max_streams: usize,
    pub responses: Vec<Resp>,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Sends `requests` over one h2c connection to 127.0.0.1:`port`, `authority` as `:authority`.
pub fn h2c(port: u16, authority: &str, requests: &[H2Request<'_>]) -> Result<H2Outcome, String> {
    runtime().block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        exchange(tcp, "http", authority, requests).await
    })
}

/// Sends `requests` over one TLS connection (ALPN h2 only) verifying `name`.
/// Also returns the protocol the server chose.
pub fn h2_tls(
    port: u16,
    config: Arc<rustls::ClientConfig>,
    name: &str,
    authority: &str,
    requests: &[H2Request<'_>],
) -> Result<H2Outcome, String> {
    runtime().block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let server_name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(server_name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let mut outcome = exchange(tls, "https", authority, requests).await?;
        outcome.alpn = alpn;
        Ok(outcome)
    })
}

/// Opens one h2c connection and, for each path, sends a GET and resets its stream
/// (RST_STREAM CANCEL) `pause` later without reading the answer: the paced "rapid reset".
/// Then asks for `last` on the same connection and returns how that stream ended.
pub fn h2c_reset_each(
    port: u16,
    authority: &str,
    paths: &[String],
    pause: Duration,
    last: &str,
) -> Result<Result<Resp, String>, String> {
    runtime().block_on(async {
        let (client, driver) = open_h2c(port).await?;
        for path in paths {
            let req = http::Request::get(format!("http://{authority}{path}"))
                .body(())
                .map_err(|e| e.to_string())?;
            let mut ready = client.clone().ready().await.map_err(|e| e.to_string())?;
            let (response, stream) = ready
                .send_request(req, true)
                .map_err(|e| format!("sending: {e}"))?;
            tokio::time::sleep(pause).await;
            // Dropping both halves of an open stream resets it.
            drop((response, stream));
        }
        let last = tokio::time::timeout(
            Duration::from_secs(20),
            send(&client, "http", authority, &H2Request::get(last)),
        )
        .await
        .map_err(|_| format!("{last}: no answer in 20 s"))?;
        drop(client);
        driver.abort();
        Ok(last)
    })
}

/// An h2c connection to 127.0.0.1:`port` (prior knowledge) and the task driving it: aborting
/// the task closes the connection.
async fn open_h2c(
    port: u16,
) -> Result<
    (
        h2::client::SendRequest<bytes::Bytes>,
        tokio::task::JoinHandle<()>,
    ),
    String,
> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let (client, connection) = h2::client::handshake(tcp)
        .await
        .map_err(|e| format!("h2 handshake: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((client, driver))
}

/// Opens one h2c connection, sends a GET for `path`, waits `pause`, then closes the
/// connection (TCP) without reading the answer.
pub fn h2c_send_and_close(
    port: u16,
    authority: &str,
    path: &str,
    pause: Duration,
) -> Result<(), String> {
    runtime().block_on(async {
        let (client, driver) = open_h2c(port).await?;
        let req = http::Request::get(format!("http://{authority}{path}"))
            .body(())
            .map_err(|e| e.to_string())?;
        let mut ready = client.ready().await.map_err(|e| e.to_string())?;
        let sent = ready
            .send_request(req, true)
            .map_err(|e| format!("sending: {e}"))?;
        tokio::time::sleep(pause).await;
        // The driver owns the socket: ending it closes the connection.
        driver.abort();
        let _ = driver.await;
        drop((sent, ready));
        Ok(())
    })
}

/// GETs `path` over one h2c connection and takes its body slowly: each DATA frame's bytes
/// are given back to the flow-control windows `pause` after the frame came, so the server
/// can send about 64 KiB per four pauses. Returns the status and the body's length.
pub fn h2c_get_slowly(
    port: u16,
    authority: &str,
    path: &str,
    pause: Duration,
) -> Result<(u16, usize), String> {
    runtime().block_on(async {
        let (client, driver) = open_h2c(port).await?;
        let req = http::Request::get(format!("http://{authority}{path}"))
            .body(())
            .map_err(|e| e.to_string())?;
        let mut ready = client.ready().await.map_err(|e| e.to_string())?;
        let (response, _stream) = ready
            .send_request(req, true)
            .map_err(|e| format!("sending: {e}"))?;
        let response = response.await.map_err(|e| format!("response: {e}"))?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut length = 0;
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| format!("body after {length} bytes: {e}"))?;
            length += chunk.len();
            tokio::time::sleep(pause).await;
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        drop(ready);
        driver.abort();
        Ok((status, length))
    })
}

async fn exchange<S>(
    io: S,
    scheme: &str,
    authority: &str,
    requests: &[H2Request<'_>],
) -> Result<H2Outcome, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = h2::client::handshake(io)
        .await
        .map_err(|e| format!("h2 handshake: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut out = Vec::new();
    for request in requests {
        let deadline = Duration::from_secs(20);
        let resp = tokio::time::timeout(deadline, send(&client, scheme, authority, request))
            .await
            .map_err(|_| format!("{} {}: no answer in 20 s", request.method, request.path))??;
        out.push(resp);
    }
    let peer_max_streams = client.current_max_send_streams();
    drop(client);
    driver.abort();
    Ok(H2Outcome {
        alpn: None,
        peer_max_streams,
        responses: out,
    })
}

async fn send(
    client: &h2::client::SendRequest<bytes::Bytes>,
    scheme: &str,
    authority: &str,
    request: &H2Request<'_>,
) -> Result<Resp, String> {
    let mut builder = http::Request::builder()
        .method(request.method)
        .uri(format!("{scheme}://{authority}{}", request.path));
    for (name, value) in request.headers {
        builder = builder.header(*name, *value);
    }
    let req = builder.body(()).map_err(|e| e.to_string())?;
    let mut client = client.clone().ready().await.map_err(|e| e.to_string())?;
    let (response, mut stream) = client
        .send_request(req, request.body.is_none())
        .map_err(|e| format!("sending: {e}"))?;
    if let Some(body) = request.body {
        stream
            .send_data(bytes::Bytes::copy_from_slice(body), true)
            .map_err(|e| format!("sending the body: {e}"))?;
    }
    let response = response.await.map_err(|e| format!("response: {e}"))?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut body_stream = response.into_body();
    let mut body = Vec::new();
    while let Some(chunk) = body_stream.data().await {
        let chunk = chunk.map_err(|e| format!("body: {e}"))?;
        let _ = body_stream.flow_control().release_capacity(chunk.len());
        body.extend_from_slice(&chunk);
    }
    Ok(Resp {
        status,
        headers,
        body,
    })
}
