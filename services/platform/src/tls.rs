//! TLS for the gRPC servers: a certificate and its key from files, and, for
//! mutual TLS, the CA whose client certificates are required.
//!
//! `<PREFIX>_TLS_CERT_FILE` and `<PREFIX>_TLS_KEY_FILE` (PEM) turn TLS on for
//! the whole port (the services, health and reflection); with
//! `<PREFIX>_TLS_CLIENT_CA_FILE` every client must present a certificate that
//! CA signed. Unset, the port speaks plaintext HTTP/2, as behind a mesh that
//! terminates TLS.

use std::{fmt, path::Path};

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use infra::config::ConfigError;

/// What a server presents, and whom it accepts, over TLS.
#[derive(Clone)]
pub struct ServerTls {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls").field("mutual", &self.client_ca.is_some()).finish_non_exhaustive()
    }
}

impl ServerTls {
    /// From the PEM texts: a certificate chain, its private key, and the CA of
    /// client certificates for mutual TLS. Checked here, so that a bad file is
    /// refused at start.
    pub fn from_pem(cert: Vec<u8>, key: Vec<u8>, client_ca: Option<Vec<u8>>) -> Result<Self, String> {
        let tls = Self { cert, key, client_ca };
        tonic::transport::Server::builder().tls_config(tls.server_config()).map_err(|err| format!("{err}"))?;
        Ok(tls)
    }

    /// From `<prefix>_TLS_CERT_FILE`, `<prefix>_TLS_KEY_FILE` and
    /// `<prefix>_TLS_CLIENT_CA_FILE`; None when no certificate is configured.
    pub fn from_env(prefix: &str) -> Result<Option<Self>, ConfigError> {
        let [cert_var, key_var, ca_var] =
            ["TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CLIENT_CA_FILE"].map(|suffix| format!("{prefix}_{suffix}"));
        let path = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
        let invalid = |name: &str, reason: String| ConfigError::Invalid { name: name.to_owned(), reason };
        let (cert, key) = match (path(&cert_var), path(&key_var)) {
            (None, None) if path(&ca_var).is_some() => {
                return Err(invalid(&ca_var, format!("mutual TLS needs {cert_var} and {key_var} too")));
            }
            (None, None) => return Ok(None),
            (Some(_), None) => return Err(invalid(&key_var, format!("{cert_var} is set: its key is needed too"))),
            (None, Some(_)) => {
                return Err(invalid(&cert_var, format!("{key_var} is set: its certificate is needed too")));
            }
            (Some(cert), Some(key)) => (cert, key),
        };
        let read = |name: &str, file: &std::ffi::OsStr| {
            std::fs::read(file)
                .map_err(|err| invalid(name, format!("cannot read {}: {err}", Path::new(file).display())))
        };
        let client_ca = path(&ca_var).map(|file| read(&ca_var, &file)).transpose()?;
        Self::from_pem(read(&cert_var, &cert)?, read(&key_var, &key)?, client_ca)
            .map_err(|reason| invalid(&format!("{cert_var}/{key_var}"), reason))
            .map(Some)
    }

    /// Whether clients must present a certificate.
    pub fn is_mutual(&self) -> bool {
        self.client_ca.is_some()
    }

    /// tonic's server configuration for this.
    pub fn server_config(&self) -> ServerTlsConfig {
        let config = ServerTlsConfig::new().identity(Identity::from_pem(&self.cert, &self.key));
        match &self.client_ca {
            Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
            None => config,
        }
    }
}
