//! Who may call the dead-letter console: a bearer token, or, over mutual TLS,
//! a verified client certificate whose name is on an allow-list.

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use tonic::{Request, Status};

/// Admits a call with `authorization: Bearer <token>`, or with a client
/// certificate the server verified (mutual TLS) whose subject common name or
/// a DNS subject alternative name is one of the configured client names.
/// A verified certificate with none of those names and no token is refused
/// PERMISSION_DENIED; no credential, or a wrong token, UNAUTHENTICATED. With
/// neither a token nor client names configured every call is refused
/// PERMISSION_DENIED: the console can replay and purge, so it is never open
/// by default. The token is compared in constant time and never logged.
#[derive(Clone)]
pub struct BearerAuth {
    token: Option<Arc<SecretString>>,
    client_names: Arc<[String]>,
}

impl BearerAuth {
    pub fn new(token: Option<SecretString>) -> Self {
        Self { token: token.map(Arc::new), client_names: Arc::new([]) }
    }

    /// Also admits verified client certificates named one of `names`.
    pub fn with_client_names(mut self, names: Vec<String>) -> Self {
        self.client_names = names.into();
        self
    }
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        if self.token.is_none() && self.client_names.is_empty() {
            return Err(Status::permission_denied("the dead-letter console is disabled: no admin token is configured"));
        }
        // Present only when the server verified them against its client CA.
        let certificate = request.peer_certs().and_then(|certs| certs.first().map(|cert| names_of(cert)));
        let refused = match certificate {
            Some(names) if !self.client_names.is_empty() => {
                if names.iter().any(|name| self.client_names.contains(name)) {
                    return Ok(request);
                }
                Some(names)
            }
            _ => None,
        };
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match (given, &self.token, refused) {
            (Some(given), Some(token), _) if same(given.trim().as_bytes(), token.expose_secret().as_bytes()) => {
                Ok(request)
            }
            (Some(_), _, _) => Err(Status::unauthenticated("the admin token is not valid")),
            (None, _, Some(names)) => Err(Status::permission_denied(format!(
                "the client certificate ({}) is not one of the admin client names",
                names.join(", ")
            ))),
            (None, _, None) if self.client_names.is_empty() => {
                Err(Status::unauthenticated("authorization: Bearer <token> is required"))
            }
            (None, _, None) => {
                Err(Status::unauthenticated("authorization: Bearer <token> or an admin client certificate is required"))
            }
        }
    }
}

/// A certificate's subject common names and DNS subject alternative names;
/// none when it does not parse.
pub(crate) fn names_of(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else { return Vec::new() };
    let common = cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok().map(str::to_owned));
    let dns = cert.subject_alternative_name().ok().flatten().into_iter().flat_map(|san| {
        san.value.general_names.iter().filter_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            _ => None,
        })
    });
    common.chain(dns).collect()
}

/// Equality whose time does not depend on where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use tonic::service::Interceptor as _;

    use super::*;

    fn call(auth: &mut BearerAuth, header: Option<&str>) -> tonic::Code {
        let mut request = Request::new(());
        if let Some(header) = header {
            request.metadata_mut().insert("authorization", header.parse().unwrap());
        }
        auth.call(request).map_or_else(|status| status.code(), |_| tonic::Code::Ok)
    }

    #[test]
    fn only_the_configured_token_passes() {
        let mut auth = BearerAuth::new(Some(SecretString::from("s3cret")));
        assert_eq!(call(&mut auth, Some("Bearer s3cret")), tonic::Code::Ok);
        assert_eq!(call(&mut auth, Some("Bearer s3creT")), tonic::Code::Unauthenticated);
        assert_eq!(call(&mut auth, Some("Bearer s3cret2")), tonic::Code::Unauthenticated);
        assert_eq!(call(&mut auth, Some("s3cret")), tonic::Code::Unauthenticated);
        assert_eq!(call(&mut auth, None), tonic::Code::Unauthenticated);
        let mut closed = BearerAuth::new(None);
        assert_eq!(call(&mut closed, Some("Bearer s3cret")), tonic::Code::PermissionDenied);
    }

    #[test]
    fn with_client_names_alone_a_call_without_a_certificate_is_unauthenticated() {
        let mut auth = BearerAuth::new(None).with_client_names(vec!["ops-admin".into()]);
        assert_eq!(call(&mut auth, None), tonic::Code::Unauthenticated);
        assert_eq!(call(&mut auth, Some("Bearer anything")), tonic::Code::Unauthenticated);
    }

    #[test]
    fn a_certificate_is_named_by_its_common_name_and_dns_names() {
        let pki = testkit::pki::Pki::new("names test CA");
        let signed = pki.client("ops-admin");
        let (_, pem) = x509_parser::pem::parse_x509_pem(signed.cert_pem.as_bytes()).expect("PEM");
        let mut names = names_of(&pem.contents);
        names.sort();
        names.dedup();
        assert_eq!(names, ["ops-admin"]);
        assert!(names_of(b"not a certificate").is_empty());
    }
}
