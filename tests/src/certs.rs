//! Test certificates, made with the openssl CLI: a CA and a server certificate for
//! `localhost` / 127.0.0.1, so clients can also verify (verify-ca, verify-full).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};

pub struct ServerCerts {
    pub ca_cert: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

fn openssl(args: &[&str], dir: &Path) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl (installed by scripts/bootstrap.sh --test-deps)")?;
    if !out.status.success() {
        bail!("openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

pub fn generate(dir: &Path) -> anyhow::Result<ServerCerts> {
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=pgwire-sensor test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ],
        dir,
    )?;
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
        dir,
    )?;
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\n")?;
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.crt",
        ],
        dir,
    )?;
    Ok(ServerCerts {
        ca_cert: dir.join("ca.crt"),
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
    })
}

/// A client certificate `name` for mutual TLS, signed by the CA `generate` made in `dir`
/// (`<name>.crt`, `<name>.key`), or self-signed when `signed` is false (one no CA vouches for).
pub fn client(dir: &Path, name: &str, signed: bool) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (key, csr, cert) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"));
    let subject = format!("/CN={name}");
    openssl(
        &["req", "-newkey", "rsa:2048", "-nodes", "-subj", &subject, "-keyout", &key, "-out", &csr],
        dir,
    )?;
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n")?;
    let (issuer, issuer_key) = if signed { ("ca.crt", "ca.key") } else { ("", "") };
    let mut args = vec!["x509", "-req", "-in", &csr, "-days", "2", "-extfile", "client.ext"];
    if signed {
        args.extend(["-CA", issuer, "-CAkey", issuer_key, "-CAcreateserial"]);
    } else {
        args.extend(["-key", &key]);
    }
    args.extend(["-out", &cert]);
    openssl(&args, dir)?;
    Ok((dir.join(cert), dir.join(key)))
}
