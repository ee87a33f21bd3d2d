//! uid -> user name, from /etc/passwd read once (the host's view; a container's users may
//! differ, which is why the uid is always reported too).

// uids from the kernel: hashbrown's fast default hasher (foldhash), not SipHash.
use hashbrown::HashMap;

use crate::finding::SharedText;

pub struct UserNames(HashMap<u32, SharedText>);

impl UserNames {
    pub fn load() -> Self {
        UserNames(parse(&std::fs::read_to_string("/etc/passwd").unwrap_or_default()))
    }

    pub fn name(&self, uid: u32) -> Option<SharedText> {
        self.0.get(&uid).cloned()
    }
}

fn parse(passwd: &str) -> HashMap<u32, SharedText> {
    passwd
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let uid = f.nth(1)?.parse().ok()?;
            Some((uid, name.into()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_passwd_lines() {
        let m =
            super::parse("root:x:0:0:root:/root:/bin/bash\nbroken\napp:x:1000:1000::/h:/bin/sh\n");
        assert_eq!(m.get(&0).map(|n| &**n), Some("root"));
        assert_eq!(m.get(&1000).map(|n| &**n), Some("app"));
        assert_eq!(m.len(), 2);
    }
}
