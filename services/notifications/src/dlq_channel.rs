//! The dead-letter console command line's connection: plaintext, or TLS
//! trusting `NOTIFICATIONS_ADMIN_CA_FILE`, presenting the client certificate
//! `NOTIFICATIONS_ADMIN_CLIENT_CERT_FILE` / `NOTIFICATIONS_ADMIN_CLIENT_KEY_FILE`
//! for mutual TLS (the server may accept it instead of a token).

use std::path::PathBuf;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

pub(crate) const CLIENT_CERT_FILE: &str = "NOTIFICATIONS_ADMIN_CLIENT_CERT_FILE";
pub(crate) const CLIENT_KEY_FILE: &str = "NOTIFICATIONS_ADMIN_CLIENT_KEY_FILE";
pub(crate) const CA_FILE: &str = "NOTIFICATIONS_ADMIN_CA_FILE";

/// A channel to `addr` (`host:port`, or a URL), over TLS when a CA or a client certificate is configured.
pub(crate) async fn connect(addr: &str) -> anyhow::Result<Channel> {
    let tls = client_tls()?;
    let url = match addr {
        addr if addr.contains("://") => addr.to_owned(),
        addr if tls.is_some() => format!("https://{addr}"),
        addr => format!("http://{addr}"),
    };
    let mut endpoint = Channel::from_shared(url.clone())?;
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|err| anyhow::anyhow!("TLS for {url}: {err}"))?;
    }
    endpoint.connect().await.map_err(|err| anyhow::anyhow!("cannot reach {url}: {err}"))
}

/// The TLS settings the variables give; None when none is set.
fn client_tls() -> anyhow::Result<Option<ClientTlsConfig>> {
    let path = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty()).map(PathBuf::from);
    let read = |name: &str, path: &PathBuf| {
        std::fs::read(path).map_err(|err| anyhow::anyhow!("cannot read {name} {}: {err}", path.display()))
    };
    let (cert, key, ca) = (path(CLIENT_CERT_FILE), path(CLIENT_KEY_FILE), path(CA_FILE));
    if cert.is_none() && key.is_none() && ca.is_none() {
        return Ok(None);
    }
    let mut tls = ClientTlsConfig::new();
    if let Some(ca) = &ca {
        tls = tls.ca_certificate(Certificate::from_pem(read(CA_FILE, ca)?));
    }
    match (&cert, &key) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(Identity::from_pem(read(CLIENT_CERT_FILE, cert)?, read(CLIENT_KEY_FILE, key)?));
        }
        (None, None) => {}
        _ => anyhow::bail!("{CLIENT_CERT_FILE} and {CLIENT_KEY_FILE} go together: set both or neither"),
    }
    Ok(Some(tls))
}
