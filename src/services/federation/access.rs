//! Which servers we federate with: `[federation] allowed_servers` (when not empty, only those)
//! and `denied_servers` (never those), as patterns with `*` (any run of characters) and `?`
//! (one character), matched case-insensitively against the whole server name, port included.

use ruma::ServerName;

/// The configured lists.
#[derive(Clone, Debug, Default)]
pub struct ServerAccess {
    allowed: Vec<String>,
    denied: Vec<String>,
}

/// Whether `name` matches `pattern` (`*` any run, `?` one character). Linear backtracking over
/// the last `*`, so at most `pattern.len() * name.len()` steps.
pub fn matches(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (
        pattern.to_ascii_lowercase().chars().collect(),
        name.to_ascii_lowercase().chars().collect(),
    );
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((star_p, star_n)) = star {
            pi = star_p + 1;
            ni = star_n + 1;
            star = Some((star_p, star_n + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

impl ServerAccess {
    /// The lists from the configuration.
    pub fn new(allowed: Vec<String>, denied: Vec<String>) -> Self {
        Self { allowed, denied }
    }

    /// Whether we may talk to `server` (either way).
    pub fn permits(&self, server: &ServerName) -> bool {
        let name = server.as_str();
        !self.denied.iter().any(|p| matches(p, name))
            && (self.allowed.is_empty() || self.allowed.iter().any(|p| matches(p, name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_names() {
        assert!(matches("*.example.org", "chat.example.org"));
        assert!(!matches("*.example.org", "example.org"));
        assert!(matches("example.???", "EXAMPLE.org"));
        assert!(matches("*", "a.b:8448"));
        assert!(!matches("a.org", "a.org.evil"));
        assert!(matches("a*b*c", "axxbyyc"));
        assert!(!matches("a*b*c", "axxbyy"));
    }

    #[test]
    fn the_deny_list_wins_and_an_allow_list_excludes_the_rest() {
        let name = |s: &str| ServerName::parse(s).unwrap();
        let open = ServerAccess::new(vec![], vec!["*.evil.example".into()]);
        assert!(open.permits(&name("good.example")));
        assert!(!open.permits(&name("x.evil.example")));
        let closed = ServerAccess::new(
            vec!["partner.example".into(), "*.evil.example".into()],
            vec!["*.evil.example".into()],
        );
        assert!(closed.permits(&name("partner.example")));
        assert!(!closed.permits(&name("other.example")));
        assert!(!closed.permits(&name("a.evil.example")));
    }
}
