//! Certificates made by the tests (rcgen: a CA, leaves signed by it) and a
//! real TLS client (rustls) that reports which certificate the server chose.

use super::client::Resp;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A certificate authority made for one test.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A leaf certificate and its key, in PEM and DER.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Leaf {
    /// The leaf certificate (first of the chain).
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    /// Writes `<stem>.crt` and `<stem>.key` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        Self {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A server certificate for `names` (DNS names, `*.wildcards` or IP addresses).
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        self.sign(rcgen::CertificateParams::new(names).unwrap())
    }

    /// Like [`TestCa::leaf`], valid only in the year 2000: long expired.
    pub fn expired_leaf(&self, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2000, 12, 31);
        self.sign(params)
    }

    /// Like [`TestCa::leaf`], valid from the year 2000 to the start of `year`.
    pub fn leaf_until(&self, names: &[&str], year: i32) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(year, 1, 1);
        self.sign(params)
    }

    /// Like [`TestCa::leaf`], valid only from the year 2100: not valid yet.
    pub fn future_leaf(&self, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params.not_before = rcgen::date_time_ymd(2100, 1, 1);
        params.not_after = rcgen::date_time_ymd(2101, 1, 1);
        self.sign(params)
    }

    /// Like [`TestCa::leaf`], valid from `seconds` from now: as an issuer that does not
    /// backdate signs it for a host whose clock is a little ahead.
    pub fn leaf_valid_in(&self, names: &[&str], seconds: i64) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params.not_before = time::OffsetDateTime::now_utc() + time::Duration::seconds(seconds);
        self.sign(params)
    }

    fn sign(&self, params: rcgen::CertificateParams) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: format!("{}{}", cert.pem(), self.issuer.pem()),
            key_pem: key.serialize_pem(),
            chain: vec![cert.der().clone(), self.issuer.der().clone()],
            key: PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        }
    }

    /// [`TestCa::leaf`] as rustls takes it for a server.
    pub fn server_cert(
        &self,
        names: &[&str],
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let leaf = self.leaf(names);
        (leaf.chain, leaf.key)
    }
}

/// A rustls server config presenting `cert` (a test origin speaking HTTPS).
pub fn server_config(
    cert: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(cert.0, cert.1)
        .expect("test certificate");
    Arc::new(config)
}

/// A rustls client config trusting `cas`, offering `alpn`; SNI is sent only
/// when `send_sni` (the name is still checked against the certificate).
pub fn client_config(cas: &[&TestCa], alpn: &[&[u8]], send_sni: bool) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots.add(ca.der()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.enable_sni = send_sni;
    Arc::new(config)
}

/// What one TLS exchange showed.
pub struct TlsExchange {
    /// The leaf certificate the server presented.
    pub served: CertificateDer<'static>,
    pub alpn: Option<Vec<u8>>,
    pub response: Resp,
}

/// One HTTP/1.1 request over a fresh TLS connection to 127.0.0.1:`port`,
/// verifying the server's certificate for `name`.
pub fn https_request(
    port: u16,
    config: Arc<rustls::ClientConfig>,
    name: &str,
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> Result<TlsExchange, String> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    https_request_on(tcp, config, name, method, path, host, headers)
}

/// [`https_request`] over a TCP connection already made (the handshake starts now).
pub fn https_request_on(
    tcp: TcpStream,
    config: Arc<rustls::ClientConfig>,
    name: &str,
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> Result<TlsExchange, String> {
    let server_name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(config, server_name).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (n, v) in headers {
        request.push_str(&format!("{n}: {v}\r\n"));
    }
    request.push_str("\r\n");
    tls.write_all(request.as_bytes())
        .map_err(|e| format!("TLS handshake or write: {e}"))?;
    let mut raw = Vec::new();
    // A close without close_notify after a complete response is fine here.
    if let Err(e) = tls.read_to_end(&mut raw) {
        if raw.is_empty() {
            return Err(format!("reading the response: {e}"));
        }
    }
    let served = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first().cloned())
        .ok_or("no certificate presented")?;
    let alpn = tls.conn.alpn_protocol().map(<[u8]>::to_vec);
    Ok(TlsExchange {
        served,
        alpn,
        response: parse_response(&raw)?,
    })
}

/// An HTTP/1.1 response read to the end of the connection.
fn parse_response(raw: &[u8]) -> Result<Resp, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head_len) = parsed.parse(raw).map_err(|e| e.to_string())? else {
        return Err(format!(
            "incomplete response: {:?}",
            String::from_utf8_lossy(raw)
        ));
    };
    let headers = super::owned_headers(parsed.headers);
    let mut body = raw[head_len..].to_vec();
    let chunked = super::find_header(&headers, "transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body)?;
    } else if let Some(length) = super::find_header(&headers, "content-length") {
        body.truncate(length.parse().map_err(|_| "bad content-length")?);
    }
    Ok(Resp {
        status: parsed.code.unwrap_or(0),
        headers,
        body,
    })
}

/// The data of a chunked body (trailers ignored).
fn dechunk(mut bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = bytes
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk size line not terminated")?;
        let size_text = std::str::from_utf8(&bytes[..line_end]).map_err(|e| e.to_string())?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|e| e.to_string())?;
        bytes = &bytes[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if bytes.len() < size + 2 {
            return Err("chunk cut short".into());
        }
        out.extend_from_slice(&bytes[..size]);
        bytes = &bytes[size + 2..];
    }
}

/// `der` as a PEM `CERTIFICATE` block, whatever the bytes (tests of damaged chains).
pub fn pem_block(der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::new();
    for group in der.chunks(3) {
        let bits = group
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= group.len() {
                text.push(ALPHABET[(bits >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                text.push('=');
            }
        }
    }
    let lines: Vec<&str> = text
        .as_bytes()
        .chunks(64)
        .map(|line| std::str::from_utf8(line).expect("ascii"))
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}
