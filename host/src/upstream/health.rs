//! Active health checks of a pool's upstreams: a TCP (and TLS) connect, or
//! `GET health_path` expecting a 2xx, each with the upstream's own server
//! name and the tenant's TLS settings.

use super::pool::AddressBook;
use super::tls::OriginTls;
use crate::config::{PoolConfig, UpstreamTarget};
use async_trait::async_trait;
use pingora::connectors::http::Connector as HttpConnector;
use pingora::connectors::TransportConnector;
use pingora::http::RequestHeader;
use pingora::lb::health_check::HealthCheck;
use pingora::lb::Backend;
use pingora::prelude::HttpPeer;
use pingora::{Error, ErrorType, Result};
use std::sync::Arc;
use std::time::Duration;

pub(super) struct OriginCheck {
    tenant: String,
    targets: Vec<UpstreamTarget>,
    book: AddressBook,
    path: Option<String>,
    host: Option<String>,
    timeout: Duration,
    tls: Arc<OriginTls>,
    tcp: TransportConnector,
    http: HttpConnector,
}

impl OriginCheck {
    pub(super) fn new(
        tenant: &str,
        targets: Vec<UpstreamTarget>,
        book: AddressBook,
        config: &PoolConfig,
        tls: Arc<OriginTls>,
    ) -> Self {
        Self {
            tenant: tenant.to_owned(),
            targets,
            book,
            path: config.health_path.clone(),
            host: config.health_host.clone(),
            timeout: config.health_timeout,
            tls,
            tcp: TransportConnector::new(None),
            http: HttpConnector::new(None),
        }
    }

    fn peer(&self, backend: &Backend) -> Result<(HttpPeer, &UpstreamTarget)> {
        let Some(addr) = backend.as_inet() else {
            return Error::e_explain(ErrorType::InternalError, "not an IP upstream");
        };
        let Some(target) = self
            .book
            .target_of(addr)
            .and_then(|index| self.targets.get(index))
        else {
            return Error::e_explain(ErrorType::ConnectNoRoute, "no upstream resolves to it now");
        };
        let mut peer = HttpPeer::new(*addr, target.tls, String::new());
        peer.options.connection_timeout = Some(self.timeout);
        peer.options.total_connection_timeout = Some(self.timeout);
        peer.options.read_timeout = Some(self.timeout);
        peer.options.write_timeout = Some(self.timeout);
        if target.tls {
            self.tls.apply(&mut peer, target);
        }
        Ok((peer, target))
    }

    async fn get(&self, peer: &HttpPeer, target: &UpstreamTarget, path: &str) -> Result<()> {
        let (mut session, _) = self.http.get_http_session(peer).await?;
        let mut req = RequestHeader::build("GET", path.as_bytes(), None)?;
        let host = self.host.clone().unwrap_or_else(|| host_field(target));
        req.insert_header("Host", host)?;
        req.insert_header("User-Agent", "cachet-health-check")?;
        session.set_write_timeout(Some(self.timeout));
        session.set_read_timeout(Some(self.timeout));
        session.write_request_header(Box::new(req)).await?;
        session.finish_request_body().await?;
        session.read_response_header().await?;
        let status = session.response_header().map_or(0, |r| r.status.as_u16());
        if !(200..300).contains(&status) {
            return Error::e_explain(
                ErrorType::CustomCode("health check status", status),
                format!("GET {path} answered {status}"),
            );
        }
        while session.read_response_body().await?.is_some() {}
        Ok(())
    }
}

/// The upstream as a `Host` names it (RFC 9110 §7.2): its port unless the scheme's default.
fn host_field(target: &UpstreamTarget) -> String {
    let host = match target.host.contains(':') && !target.host.starts_with('[') {
        true => format!("[{}]", target.host),
        false => target.host.clone(),
    };
    let default_port = if target.tls { 443 } else { 80 };
    match target.port == default_port {
        true => host,
        false => format!("{host}:{}", target.port),
    }
}

#[async_trait]
impl HealthCheck for OriginCheck {
    async fn check(&self, backend: &Backend) -> Result<()> {
        let (peer, target) = self.peer(backend)?;
        let checked = async {
            match &self.path {
                Some(path) => self.get(&peer, target, path).await,
                None => self.tcp.get_stream(&peer).await.map(|_| ()),
            }
        };
        // The connectors bound connect and each read; this bounds the whole check.
        match tokio::time::timeout(self.timeout * 2, checked).await {
            Ok(result) => result,
            Err(_) => Error::e_explain(ErrorType::ReadTimedout, "health check timed out"),
        }
    }

    async fn health_status_change(&self, backend: &Backend, healthy: bool) {
        if healthy {
            tracing::info!(tenant = self.tenant, upstream = %backend.addr, "upstream healthy again");
        } else {
            tracing::warn!(tenant = self.tenant, upstream = %backend.addr, "upstream failed its health check: taken out");
        }
    }

    fn health_threshold(&self, _success: bool) -> usize {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::host_field;
    use crate::config::UpstreamTarget;

    fn target(host: &str, port: u16, tls: bool) -> UpstreamTarget {
        UpstreamTarget {
            written: String::new(),
            tls,
            host: host.into(),
            port,
            addrs: Vec::new(),
        }
    }

    #[test]
    fn the_host_field_names_the_port_unless_it_is_the_default() {
        assert_eq!(host_field(&target("origin.test", 80, false)), "origin.test");
        assert_eq!(host_field(&target("origin.test", 443, true)), "origin.test");
        assert_eq!(
            host_field(&target("origin.test", 8080, false)),
            "origin.test:8080"
        );
        assert_eq!(
            host_field(&target("origin.test", 80, true)),
            "origin.test:80"
        );
        assert_eq!(host_field(&target("::1", 8443, true)), "[::1]:8443");
    }
}
