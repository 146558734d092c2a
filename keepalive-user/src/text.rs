//! Kernel- and user-provided strings (a process's `comm` is settable by any
//! user with prctl) made safe for a terminal: control characters escaped.

use std::borrow::Cow;

/// `s` with every control character as `\xNN` (and `\` as `\\` once any
/// escaping is needed, so the result reads back unambiguously).
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                for b in c.to_string().bytes() {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A kernel `comm` (NUL-padded, up to 16 bytes) as text.
pub fn comm(bytes: &[u8; 16]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_control_characters_only() {
        assert!(matches!(printable("nginx: worker"), Cow::Borrowed(_)));
        assert_eq!(printable("evil\x1b[2J"), "evil\\x1b[2J");
        assert_eq!(printable("a\\b\n"), "a\\\\b\\x0a");
        assert_eq!(printable("\u{85}x"), "\\xc2\\x85x");
    }
}
