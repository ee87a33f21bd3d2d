//! How alerts reach Alertmanager as people run it: every peer of an HA cluster (Alertmanager
//! deduplicates what its peers all received, so a sensor posts to each, as Prometheus does),
//! over http or https (webpki's Mozilla roots compiled in, not the host's store; or only the
//! CA given), with basic
//! auth or a bearer token read from a file.
//!
//! Secrets are read from files, never from flags (a flag is in `ps` and in shell history),
//! re-read for each request so a rotated token (Kubernetes projected volumes) is picked up,
//! and marked sensitive so no log or error prints them.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use anyhow::{bail, ensure, Context as _};
use reqwest::Url;
use tracing::warn;

/// One Alertmanager: where its v2 alerts endpoint is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The URL as given (no credentials can be in it: refused at parse time).
    pub base: Url,
}

impl Peer {
    /// `url` is Alertmanager's base, e.g. `https://am-0.monitoring:9093` or a route prefix
    /// such as `http://gateway/alertmanager`.
    pub fn parse(url: &str) -> anyhow::Result<Peer> {
        // Errors quote the URL without whatever precedes an `@` (user:password) and without
        // a query or fragment (a token may be in either).
        let url_shown = url.split(['?', '#']).next().unwrap_or_default();
        let shown = match url_shown.rsplit_once('@') {
            Some((before, after)) => {
                let scheme = before.split_once("://").map_or("", |(scheme, _)| scheme);
                format!("{scheme}{}***@{after}", if scheme.is_empty() { "" } else { "://" })
            }
            None => url_shown.to_string(),
        };
        let base = Url::parse(url).map_err(|err| {
            anyhow::anyhow!("{shown:?} is not a URL like http://127.0.0.1:9093: {err}")
        })?;
        ensure!(
            matches!(base.scheme(), "http" | "https"),
            "{shown:?} is not an http(s) URL, e.g. http://127.0.0.1:9093"
        );
        ensure!(base.host().is_some(), "{shown:?} names no host");
        ensure!(
            base.username().is_empty() && base.password().is_none(),
            "{shown:?} carries credentials, which would show in `ps` and in logs: use \
             --alertmanager-basic-auth-user with --alertmanager-basic-auth-password-file"
        );
        ensure!(
            base.query().is_none() && base.fragment().is_none(),
            "{shown:?} has a query or fragment; give Alertmanager's base URL"
        );
        Ok(Peer { base })
    }

    /// The v2 API's alerts endpoint under the base.
    pub fn alerts_endpoint(&self) -> String {
        format!("{}/api/v2/alerts", self.base.as_str().trim_end_matches('/'))
    }

    pub fn is_https(&self) -> bool {
        self.base.scheme() == "https"
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.base.as_str().trim_end_matches('/'))
    }
}

/// Who the sensor says it is to Alertmanager (or the proxy in front of it).
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `Authorization: Basic`, the password read from a file.
    Basic { user: String, password_file: PathBuf },
    /// `Authorization: Bearer`, the token read from a file.
    Bearer { token_file: PathBuf },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only where the secret lives, never the secret.
        match self {
            Credentials::Basic { user, password_file } => f
                .debug_struct("Basic")
                .field("user", user)
                .field("password_file", password_file)
                .finish(),
            Credentials::Bearer { token_file } => {
                f.debug_struct("Bearer").field("token_file", token_file).finish()
            }
        }
    }
}

impl Credentials {
    /// `request` with the `Authorization` header, from the file as it is now (reqwest marks
    /// it sensitive: never logged).
    pub fn apply(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::RequestBuilder> {
        Ok(match self {
            Credentials::Basic { user, password_file } => {
                request.basic_auth(user, Some(read_secret(password_file)?))
            }
            Credentials::Bearer { token_file } => request.bearer_auth(read_secret(token_file)?),
        })
    }

    /// The secret file can be read now and is not empty.
    pub fn check(&self) -> anyhow::Result<()> {
        let file = match self {
            Credentials::Basic { password_file, .. } => password_file,
            Credentials::Bearer { token_file } => token_file,
        };
        read_secret(file).map(drop)
    }
}

/// A secret file's content without its trailing newline; empty is an error (an empty
/// password is a mistake, not a choice).
fn read_secret(path: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let secret = text.trim_end_matches(['\n', '\r']);
    ensure!(!secret.is_empty(), "{} is empty", path.display());
    Ok(secret.to_string())
}

/// Everything needed to post alerts, checked before anything is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Each Alertmanager of the cluster, each once.
    pub peers: Vec<Peer>,
    /// Trust only this CA (PEM) for https peers, instead of the compiled-in public roots.
    pub ca_file: Option<PathBuf>,
    pub credentials: Option<Credentials>,
}

impl Delivery {
    /// Check that the credentials can be read now, so a mistake is a usage error at start,
    /// not a stream of failed pushes later.
    pub fn check_credentials(&self) -> anyhow::Result<()> {
        if let Some(credentials) = &self.credentials {
            credentials.check()?;
            if let Some(peer) = self.peers.iter().find(|p| !p.is_https()) {
                warn!(%peer, "Alertmanager credentials will cross the network unencrypted (http)");
            }
        }
        Ok(())
    }

    /// The HTTP client every peer's worker uses.
    pub fn client(&self) -> anyhow::Result<reqwest::Client> {
        let mut builder = reqwest::Client::builder().timeout(super::alertmanager::REQUEST_TIMEOUT);
        if let Some(path) = &self.ca_file {
            let pem =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let roots = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("{} is not PEM certificates", path.display()))?;
            if roots.is_empty() {
                bail!("{} holds no PEM certificate", path.display());
            }
            // As Prometheus's ca_file: the CA given replaces the public roots.
            builder = builder.tls_built_in_root_certs(false);
            for root in roots {
                builder = builder.add_root_certificate(root);
            }
        }
        Ok(builder.build()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_base_urls_without_credentials() {
        let peer = Peer::parse("https://am-0.monitoring:9093/").unwrap();
        assert_eq!(peer.alerts_endpoint(), "https://am-0.monitoring:9093/api/v2/alerts");
        assert!(peer.is_https());
        let prefixed = Peer::parse("http://gateway/alertmanager").unwrap();
        assert_eq!(prefixed.alerts_endpoint(), "http://gateway/alertmanager/api/v2/alerts");
        assert_eq!(prefixed.to_string(), "http://gateway/alertmanager");
        for bad in
            ["127.0.0.1:9093", "ftp://am", "http://", "https://u:p@am:9093", "http://am/?x=1"]
        {
            assert!(Peer::parse(bad).is_err(), "{bad}");
        }
        let err = Peer::parse("https://u:secret@am:9093").unwrap_err().to_string();
        assert!(err.contains("basic-auth") && err.contains("https://***@am:9093"), "{err}");
        for secret in ["u:secret@am:9093", "http://am:9093/?access_token=secret"] {
            let err = Peer::parse(secret).unwrap_err().to_string();
            assert!(!err.contains("secret"), "{err}");
        }
    }

    #[test]
    fn credentials_come_from_files_and_never_show() {
        let dir = crate::test_files::scratch_dir("delivery-secret", &[("secret", "s3cret\n")]);
        let file = dir.join("secret");
        let header = |c: &Credentials| -> anyhow::Result<reqwest::header::HeaderValue> {
            let request = c.apply(reqwest::Client::new().post("http://am:9093/"))?.build()?;
            Ok(request.headers()[reqwest::header::AUTHORIZATION].clone())
        };
        let basic = Credentials::Basic { user: "sensor".into(), password_file: file.clone() };
        // base64("sensor:s3cret")
        assert_eq!(header(&basic).unwrap(), "Basic c2Vuc29yOnMzY3JldA==");
        assert!(header(&basic).unwrap().is_sensitive());
        let bearer = Credentials::Bearer { token_file: file.clone() };
        assert_eq!(header(&bearer).unwrap(), "Bearer s3cret");
        assert!(!format!("{basic:?}{bearer:?}").contains("s3cret"));
        // Rotated: the next request reads the new token.
        std::fs::write(&file, "rotated").unwrap();
        assert_eq!(header(&bearer).unwrap(), "Bearer rotated");
        std::fs::write(&file, "\n").unwrap();
        assert!(header(&bearer).unwrap_err().to_string().contains("is empty"));
        let missing = Credentials::Bearer { token_file: dir.join("nope") };
        assert!(header(&missing).unwrap_err().to_string().contains("cannot read"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_ca_file_must_hold_certificates() {
        let dir = crate::test_files::scratch_dir("delivery-ca", &[("ca.pem", "not a certificate")]);
        let ca = dir.join("ca.pem");
        let delivery = Delivery {
            peers: vec![Peer::parse("https://am:9093").unwrap()],
            ca_file: Some(ca),
            credentials: None,
        };
        let err = format!("{:#}", delivery.client().unwrap_err());
        assert!(err.contains("PEM"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
