//! Secrets out of command lines before they reach a finding, a log or an alert: passwords
//! in URIs (`postgresql://app:SECRET@db`), `key=value` settings with a secret-looking key
//! (`password=`, `sslpassword=`, `PGPASSWORD=`, `api_token=`...), in conninfo strings and
//! query strings, and the value after flags like `--password`.

const MASK: &str = "***";

/// Keys whose values are secrets (compared case-insensitively, after leading dashes).
fn is_secret_key(key: &str) -> bool {
    let key = key.trim_start_matches('-').to_ascii_lowercase();
    const EXACT: &[&str] = &["pass", "pwd", "passwd", "password", "secret", "token", "apikey"];
    const PARTS: &[&str] = &[
        "password",
        "passwd",
        "secret",
        "token",
        "api_key",
        "api-key",
        "access_key",
        "private_key",
    ];
    EXACT.contains(&key.as_str()) || PARTS.iter().any(|p| key.contains(p))
}

/// Flags whose next argument is a secret (`--password SECRET`).
fn is_secret_flag(arg: &str) -> bool {
    arg.starts_with("--") && !arg.contains('=') && is_secret_key(arg)
}

pub fn redact_command_line(args: &[String]) -> String {
    let mut out: Vec<String> = Vec::with_capacity(args.len());
    let mut mask_next = false;
    for arg in args {
        if mask_next {
            out.push(MASK.to_string());
            mask_next = false;
            continue;
        }
        mask_next = is_secret_flag(arg);
        out.push(redact_arg(arg));
    }
    out.join(" ")
}

fn redact_arg(arg: &str) -> String {
    redact_pairs(&redact_uris(arg))
}

/// `scheme://user:SECRET@host` -> `scheme://user:***@host`, every URI in the argument.
fn redact_uris(arg: &str) -> String {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let authority_end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match authority.rfind('@') {
            Some(userinfo_end) => {
                let userinfo = &authority[..userinfo_end];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..=colon]);
                        out.push_str(MASK);
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[userinfo_end..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    out
}

/// `key=value` pairs with a secret key: the value (up to whitespace, `&` or `;`, or the
/// closing quote of a quoted value) becomes `***`.
fn redact_pairs(arg: &str) -> String {
    let bytes = arg.as_bytes();
    let mut out = String::with_capacity(arg.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'=' {
            i += 1;
            continue;
        }
        let key_start = arg[..i]
            .rfind(|c: char| c.is_whitespace() || matches!(c, '?' | '&' | ';' | '"' | '\''))
            .map_or(0, |p| p + 1);
        if !is_secret_key(arg[key_start..i].trim()) {
            i += 1;
            continue;
        }
        let value_start = i + 1;
        let value_end = match bytes.get(value_start) {
            Some(&quote @ (b'\'' | b'"')) => arg[value_start + 1..]
                .find(quote as char)
                .map_or(arg.len(), |p| value_start + 1 + p + 1),
            _ => arg[value_start..]
                .find(|c: char| c.is_whitespace() || matches!(c, '&' | ';'))
                .map_or(arg.len(), |p| value_start + p),
        };
        out.push_str(&arg[copied..value_start]);
        out.push_str(MASK);
        copied = value_end;
        i = value_end.max(i + 1);
    }
    out.push_str(&arg[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(args: &[&str]) -> String {
        redact_command_line(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn uri_passwords() {
        assert_eq!(
            r(&["psql", "postgresql://app:S3cret@db:26257/orders?sslmode=disable"]),
            "psql postgresql://app:***@db:26257/orders?sslmode=disable"
        );
        assert_eq!(r(&["x", "postgres://app@db/x"]), "x postgres://app@db/x");
        assert_eq!(
            r(&["x", "--url=cockroachdb://root:p%40ss:w@host:26257"]),
            "x --url=cockroachdb://root:***@host:26257"
        );
    }

    #[test]
    fn conninfo_and_query_strings() {
        assert_eq!(
            r(&["psql", "host=db password=hunter2 dbname=x"]),
            "psql host=db password=*** dbname=x"
        );
        assert_eq!(
            r(&["psql", "host=db password='a b c' user=u"]),
            "psql host=db password=*** user=u"
        );
        assert_eq!(
            r(&["app", "postgres://db/x?user=u&password=hunter2&sslmode=require"]),
            "app postgres://db/x?user=u&password=***&sslmode=require"
        );
        assert_eq!(r(&["app", "sslpassword=k3y"]), "app sslpassword=***");
    }

    #[test]
    fn environment_style_assignments_and_flags() {
        assert_eq!(r(&["env", "PGPASSWORD=hunter2", "psql"]), "env PGPASSWORD=*** psql");
        assert_eq!(
            r(&["app", "DB_PASSWORD=x", "API_TOKEN=y"]),
            "app DB_PASSWORD=*** API_TOKEN=***"
        );
        assert_eq!(
            r(&["cli", "--password", "hunter2", "-p", "26257"]),
            "cli --password *** -p 26257"
        );
        assert_eq!(r(&["cli", "--password=hunter2"]), "cli --password=***");
        assert_eq!(r(&["cli", "--db-token", "abc"]), "cli --db-token ***");
    }

    #[test]
    fn harmless_arguments_are_left_alone() {
        assert_eq!(
            r(&["psql", "-h", "db", "-p", "26257", "-c", "select 1=1"]),
            "psql -h db -p 26257 -c select 1=1"
        );
        assert_eq!(r(&["flask", "run", "--port=5000"]), "flask run --port=5000");
        assert_eq!(r(&[]), "");
    }

    #[test]
    fn never_panics_on_odd_input() {
        for s in ["=", "password=", "://", "a://b:@", "password='unterminated", "é=ü password=é"]
        {
            let out = r(&[s]);
            assert!(!out.contains("unterminated"), "{out}");
        }
        assert_eq!(r(&["é=ü password=é"]), "é=ü password=***");
    }
}
