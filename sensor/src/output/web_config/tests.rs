use std::{fs, path::Path};

use super::*;

/// A self-signed certificate for localhost and its key, as PEM.
fn self_signed(name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap().self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write_pair(dir: &Path, stem: &str, name: &str) {
    let (cert, key) = self_signed(name);
    fs::write(dir.join(format!("{stem}.crt")), cert).unwrap();
    fs::write(dir.join(format!("{stem}.key")), key).unwrap();
}

fn error_of(text: &str, base: &Path) -> String {
    format!("{:#}", WebSecurity::parse(text, base).unwrap_err())
}

fn served(files: &CertificateFiles) -> Vec<u8> {
    files.current().end_entity_cert().unwrap().to_vec()
}

#[test]
fn an_empty_file_means_plain_http_without_auth() {
    let security = WebSecurity::parse("", Path::new(".")).unwrap();
    assert!(security.tls.is_none() && security.basic_auth.is_none());
    assert_eq!(security.scheme(), "http");
}

#[test]
fn keys_it_does_not_support_are_refused_by_name() {
    let dir = tempdir("keys_it_does_not_support");
    write_pair(dir.as_path(), "server", "localhost");
    let err = error_of("http_server_config:\n  http2: false\n", dir.as_path());
    assert!(err.contains("http_server_config"), "{err}");
    let err = error_of(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
        dir.as_path(),
    );
    assert!(err.contains("cipher_suites"), "{err}");
}

#[test]
fn relative_paths_are_taken_from_the_files_directory() {
    let dir = tempdir("relative_paths_are_taken");
    write_pair(dir.as_path(), "server", "localhost");
    let path = dir.as_path().join("web.yml");
    fs::write(&path, "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n")
        .unwrap();
    let security = WebSecurity::load(&path).unwrap();
    assert_eq!(security.scheme(), "https");
}

#[test]
fn a_key_that_does_not_match_its_certificate_is_refused() {
    let dir = tempdir("a_key_that_does_not_matc");
    write_pair(dir.as_path(), "a", "localhost");
    write_pair(dir.as_path(), "b", "localhost");
    let err =
        error_of("tls_server_config:\n  cert_file: a.crt\n  key_file: b.key\n", dir.as_path());
    assert!(err.contains("does not match"), "{err}");
    let err = error_of(
        "tls_server_config:\n  cert_file: a.crt\n  key_file: missing.key\n",
        dir.as_path(),
    );
    assert!(err.contains("key_file") && err.contains("missing.key"), "{err}");
}

#[test]
fn client_certificates_are_verified_or_refused() {
    let dir = tempdir("client_certificates_are_");
    write_pair(dir.as_path(), "server", "localhost");
    write_pair(dir.as_path(), "ca", "scrapers' CA");
    let tls = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";
    for unverified in ["RequestClientCert", "RequireAnyClientCert"] {
        let err = error_of(&format!("{tls}  client_auth_type: {unverified}\n"), dir.as_path());
        assert!(err.contains("proves nothing"), "{err}");
    }
    let err =
        error_of(&format!("{tls}  client_auth_type: RequireAndVerifyClientCert\n"), dir.as_path());
    assert!(err.contains("needs client_ca_file"), "{err}");
    let err = error_of(&format!("{tls}  client_ca_file: ca.crt\n"), dir.as_path());
    assert!(err.contains("client_auth_type is not"), "a CA is never dropped in silence: {err}");
    for verified in ["RequireAndVerifyClientCert", "VerifyClientCertIfGiven"] {
        let text = format!("{tls}  client_auth_type: {verified}\n  client_ca_file: ca.crt\n");
        assert!(WebSecurity::parse(&text, dir.as_path()).is_ok(), "{verified}");
    }
}

#[test]
fn protocol_versions_follow_min_and_max() {
    use TlsVersion::*;
    let versions = |min, max| {
        protocol_versions(min, max).map(|v| v.iter().map(|v| v.version).collect::<Vec<_>>())
    };
    assert_eq!(versions(None, None).unwrap().len(), 2);
    assert_eq!(versions(Some(TLS13), None).unwrap(), [rustls::ProtocolVersion::TLSv1_3]);
    assert_eq!(versions(Some(TLS10), Some(TLS12)).unwrap(), [rustls::ProtocolVersion::TLSv1_2]);
    assert!(versions(Some(TLS13), Some(TLS12)).is_err());
    assert!(versions(None, Some(TLS11)).is_err());
}

#[test]
fn a_rotated_certificate_is_served_and_a_broken_one_is_not() {
    let dir = tempdir("a_rotated_certificate_is");
    write_pair(dir.as_path(), "server", "first.example");
    let (cert, key) = (dir.as_path().join("server.crt"), dir.as_path().join("server.key"));
    let files = CertificateFiles::load(cert, key, provider()).unwrap();
    let first = served(&files);

    // Modification times have a coarse grain on some filesystems: make sure they differ.
    std::thread::sleep(std::time::Duration::from_millis(20));
    write_pair(dir.as_path(), "server", "second.example");
    let second = served(&files);
    assert_ne!(first, second, "the new pair is served");

    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::write(dir.as_path().join("server.key"), "not a key").unwrap();
    assert_eq!(served(&files), second, "a broken pair keeps the previous one");
}

fn header(user: &str, password: &str) -> Vec<u8> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}").into_bytes()
}

#[test]
fn basic_auth_takes_the_right_password_only() {
    let hash = bcrypt::hash("s3cret:with colon", 4).unwrap();
    let text = format!("basic_auth_users:\n  prometheus: '{hash}'\n");
    let security = WebSecurity::parse(&text, Path::new(".")).unwrap();
    let auth = security.basic_auth.unwrap();
    assert!(auth.allows(Some(&header("prometheus", "s3cret:with colon"))));
    // Again, from the cache of verified credentials.
    assert!(auth.allows(Some(&header("prometheus", "s3cret:with colon"))));
    assert!(!auth.allows(Some(&header("prometheus", "s3cret"))));
    assert!(!auth.allows(Some(&header("someone", "s3cret:with colon"))));
    assert!(!auth.allows(None));
    assert!(!auth.allows(Some(b"Basic not base64!")));
    assert!(!auth.allows(Some(b"Bearer token")));
    let lower = String::from_utf8(header("prometheus", "s3cret:with colon"))
        .unwrap()
        .replacen("Basic", "basic", 1);
    assert!(auth.allows(Some(lower.as_bytes())), "the scheme is case-insensitive");
}

#[test]
fn a_password_in_clear_instead_of_a_hash_is_refused() {
    let err = error_of("basic_auth_users:\n  prometheus: hunter2\n", Path::new("."));
    assert!(err.contains("prometheus: not a bcrypt hash") && !err.contains("hunter2"), "{err}");
}

#[test]
fn the_dummy_hash_is_a_bcrypt_hash() {
    assert!(DUMMY_HASH.parse::<bcrypt::HashParts>().is_ok());
}

/// A fresh directory of this test's own (tests run in parallel in one process).
fn tempdir(tag: &str) -> std::path::PathBuf {
    crate::test_files::scratch_dir(&format!("web-config-{tag}"), &[])
}
